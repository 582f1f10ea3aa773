//! Numeric tuning variables of the environment (`KHEISH_DELIVERY_*`, `KHEISH_SIDECAR_*_MS`,
//! `KHEISH_SLACK_FILE_BUDGET_MS`): one reading rule for all of them. Each caller words its own
//! refusal (the daemon refuses to start on one, exit 4).

use std::time::Duration;

use crate::net::slack_api::DEFAULT_FILE_BUDGET;

/// Why a variable's value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a whole non-negative number.
    NotANumber(String),
    /// A number outside the allowed range.
    OutOfRange(String),
}

/// Reads `var` through `env`: `Ok(None)` when it is unset or blank, else its value (trimmed) as
/// a whole number within `min..=max`.
pub fn number(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, Refused> {
    let Some(value) = env(var).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match value.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        Ok(_) => Err(Refused::OutOfRange(value)),
        Err(_) => Err(Refused::NotANumber(value)),
    }
}

/// The variable that overrides [`DEFAULT_FILE_BUDGET`], how long Slack ingress may spend
/// downloading one message's files (milliseconds, 100 to 600 000).
pub const FILE_BUDGET_VAR: &str = "KHEISH_SLACK_FILE_BUDGET_MS";

/// Reads [`FILE_BUDGET_VAR`] through `env`: unset or empty is the default; anything else must
/// be a whole number of milliseconds in range (the daemon refuses to start otherwise, exit 4).
pub fn slack_file_budget_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Duration, String> {
    match number(env, FILE_BUDGET_VAR, 100, 600_000) {
        Ok(ms) => Ok(ms.map_or(DEFAULT_FILE_BUDGET, Duration::from_millis)),
        Err(Refused::OutOfRange(value) | Refused::NotANumber(value)) => Err(format!(
            "{FILE_BUDGET_VAR}=`{value}` is invalid: must be a whole number of milliseconds \
             between 100 and 600000"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_budget_comes_from_its_variable_or_the_default() {
        let env = |value: Option<&'static str>| {
            move |name: &str| {
                assert_eq!(name, FILE_BUDGET_VAR);
                value.map(str::to_string)
            }
        };
        assert_eq!(
            slack_file_budget_from_env(&env(None)),
            Ok(DEFAULT_FILE_BUDGET)
        );
        assert_eq!(
            slack_file_budget_from_env(&env(Some(" "))),
            Ok(DEFAULT_FILE_BUDGET)
        );
        assert_eq!(
            slack_file_budget_from_env(&env(Some("100"))),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(
            slack_file_budget_from_env(&env(Some(" 600000 "))),
            Ok(Duration::from_secs(600))
        );
        for bad in ["0", "99", "600001", "-5", "2s"] {
            let err = slack_file_budget_from_env(&env(Some(bad))).unwrap_err();
            assert!(err.contains(FILE_BUDGET_VAR) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn unset_blank_in_range_and_refused_values() {
        let env = |value: Option<&'static str>| move |_: &str| value.map(str::to_string);
        assert_eq!(number(&env(None), "V", 1, 9), Ok(None));
        assert_eq!(number(&env(Some("  ")), "V", 1, 9), Ok(None));
        assert_eq!(number(&env(Some(" 9 ")), "V", 1, 9), Ok(Some(9)));
        assert_eq!(
            number(&env(Some("10")), "V", 1, 9),
            Err(Refused::OutOfRange("10".into()))
        );
        assert_eq!(
            number(&env(Some("-1")), "V", 1, 9),
            Err(Refused::NotANumber("-1".into()))
        );
    }
}
