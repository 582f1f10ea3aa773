//! `sign`: compute the signature a client must send to a connector (SPEC §1.3, §7.2, §8), or
//! check one with `--verify`. The MAC itself is [`crate::ingress::auth`], the same code ingress
//! verifies with; this file only resolves the inputs (secret, request target, body, timestamp)
//! and renders the result. It never prints a secret, and never takes one as a plain argument.
//!
//! Decisions an operator can rely on:
//! - `--verify` checks the signature AT the given `--timestamp` (which it therefore requires):
//!   it answers "was this request signed with this secret", so a request captured hours ago
//!   still verifies. When the timestamp is outside the ingress window, an info line says that
//!   ingress would refuse it as stale.
//! - `--format curl` with `--body -` prints `--data-binary @-`: the body was consumed from
//!   standard input, so the printed command reads it from standard input too, and a comment line
//!   above it says to pipe the same bytes in again.
//! - `--path` without `--url` makes curl target `http://127.0.0.1:4000` (the `serve` default).
//! - The curl command is quiet (`-sS`: no progress meter, errors still shown) and prints the
//!   answer's body; it exits non-zero on an HTTP error status only with `--curl-fail`
//!   (`--fail-with-body`, which needs curl 7.76 or newer, so it is not the default).

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::Context;
use crate::cli::{SignArgs, SignFormat, SignScheme};
use crate::exit::{ExitStatus, StatusError};
use crate::ingress::auth::{AuthError, Scheme};
use crate::secrets::{self, Secret, SecretSource};

/// Where curl sends a request given with `--path` or `--connector` only: the `serve` default
/// listen address.
const DEFAULT_BASE_URL: &str = "http://127.0.0.1:4000";
/// The default `signature_max_age_secs` of HTTP connectors (SPEC §2.1), used for the stale
/// note when no connector says otherwise.
const DEFAULT_MAX_AGE_SECS: u32 = 300;

pub fn run(ctx: &Context, args: SignArgs) -> Result<ExitStatus> {
    let scheme = match args.scheme {
        SignScheme::Kheish => Scheme::KheishV1,
        SignScheme::Slack => Scheme::SlackV0,
    };
    let format = if ctx.out.json_mode() {
        SignFormat::Json
    } else {
        args.format
    };
    if args.curl_fail && (format != SignFormat::Curl || args.verify.is_some()) {
        return Err(usage(
            "`--curl-fail` only applies to the printed curl command: use it with `--format curl` \
(without `--json` or `--verify`)",
        ));
    }
    let method = normalize_method(&args.method).map_err(usage)?;
    let timestamp = timestamp(&args, scheme)?;
    let target = request_target(&args, scheme, format)?;
    let key = resolve_key(ctx, &args, scheme)?;
    let body = read_body(&args.body)?;
    let path_and_query = target.as_ref().map_or("", |t| t.path_and_query.as_str());
    let secret = key.secret.expose().as_bytes();
    note_if_stale(ctx, scheme, timestamp, key.max_age_secs)?;

    if let Some(candidate) = &args.verify {
        // The age check runs at the signed timestamp itself, so it always passes: see the
        // module docs for why.
        let timestamp_text = timestamp.to_string();
        let res = scheme.verify(
            &[secret],
            &method,
            path_and_query,
            &[timestamp_text.as_str()],
            &[candidate.as_str()],
            &body,
            timestamp,
            0,
        );
        return report_verification(ctx, format, res);
    }

    let signature = scheme.sign(secret, &method, path_and_query, timestamp, &body);
    match format {
        SignFormat::Headers => {
            ctx.out
                .line(&format!("{}: {timestamp}", scheme.timestamp_header()))?;
            ctx.out
                .line(&format!("{}: {signature}", scheme.signature_header()))?;
        }
        SignFormat::Json => ctx.out.json(&SignatureView {
            timestamp,
            signature: &signature,
            canonical_prefix: scheme.canonical_prefix(&method, path_and_query, timestamp),
            method: &method,
            path: target.as_ref().map(|t| t.path_and_query.as_str()),
        })?,
        SignFormat::Curl => {
            let target = target.expect("invariant: curl format requires a target (checked above)");
            let curl = CurlCommand {
                method: &method,
                url: &target.curl_url,
                headers: [
                    (scheme.timestamp_header(), timestamp.to_string()),
                    (scheme.signature_header(), signature),
                ],
                body: &args.body,
                bearer: key.bearer.as_ref(),
                fail: args.curl_fail,
            };
            for line in curl.render()? {
                ctx.out.line(&line)?;
            }
        }
    }
    Ok(ExitStatus::Success)
}

/// `--timestamp`, or now; `--verify` needs the timestamp the signature was sent with.
fn timestamp(args: &SignArgs, scheme: Scheme) -> Result<i64> {
    match (args.timestamp, &args.verify) {
        (Some(t), _) if t < 0 => Err(usage(format!(
            "`--timestamp {t}`: must be Unix seconds, 0 or more"
        ))),
        (Some(t), _) => Ok(t),
        (None, Some(_)) => Err(usage(format!(
            "`--verify` needs `--timestamp UNIX`: the `{}` value the signature was sent with",
            scheme.timestamp_header()
        ))),
        (None, None) => now_unix(),
    }
}

/// The request target from `--url`, else `--path`, else the connector's ingress route. Kheish
/// signatures cover it, and curl needs it; a Slack signature alone does not.
fn request_target(args: &SignArgs, scheme: Scheme, format: SignFormat) -> Result<Option<Target>> {
    let target = match (&args.url, &args.path, &args.connector) {
        (Some(url), _, _) => Some(Target::from_url(url).map_err(usage)?),
        (None, Some(path), _) => Some(Target::from_path(path).map_err(usage)?),
        (None, None, Some(name)) => {
            Some(Target::from_path(&ingress_path(scheme, name)).map_err(usage)?)
        }
        (None, None, None) => None,
    };
    if target.is_none() && scheme.signs_request_target() {
        return Err(usage(
            "no request target: pass `--url URL`, `--path PATH` or `--connector NAME` \
(the path and query are part of the signature)",
        ));
    }
    if target.is_none() && format == SignFormat::Curl {
        return Err(usage(
            "`--format curl` needs a URL: pass `--url URL`, `--path PATH` or `--connector NAME`",
        ));
    }
    Ok(target)
}

/// The `--format json` object (SPEC §1.3).
#[derive(Debug, Serialize)]
struct SignatureView<'a> {
    timestamp: i64,
    signature: &'a str,
    canonical_prefix: String,
    method: &'a str,
    /// The signed path and query; `null` for a Slack signature without a target.
    path: Option<&'a str>,
}

/// The `--verify` result under `--json`.
#[derive(Debug, Serialize)]
struct VerificationView {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn report_verification(
    ctx: &Context,
    format: SignFormat,
    res: Result<(), AuthError>,
) -> Result<ExitStatus> {
    let json = format == SignFormat::Json;
    match res {
        Ok(()) if json => ctx.out.json(&VerificationView {
            valid: true,
            error: None,
        })?,
        Ok(()) => ctx.out.line("signature ok")?,
        Err(AuthError::Mismatch) if json => {
            ctx.out.json(&VerificationView {
                valid: false,
                error: Some(AuthError::Mismatch.to_string()),
            })?;
            return Ok(ExitStatus::Failure);
        }
        Err(AuthError::Mismatch) => {
            ctx.out.line("signature mismatch")?;
            return Ok(ExitStatus::Failure);
        }
        // A malformed `--verify` value (the only other failure possible here) is an error with
        // its reason, not a mismatch.
        Err(other) => {
            return Err(StatusError::new(
                ExitStatus::Failure,
                format!("the `--verify` value is not a signature: {other}"),
            )
            .into())
        }
    }
    Ok(ExitStatus::Success)
}

/// The secret to sign with, and what the connector (if one was named) adds.
struct Key {
    secret: Secret,
    /// `--connector` only: the connector's bearer token source, for the curl command.
    bearer: Option<SecretSource>,
    /// The connector's accepted clock skew (default for HTTP connectors, or Slack's fixed one).
    max_age_secs: u32,
}

fn resolve_key(ctx: &Context, args: &SignArgs, scheme: Scheme) -> Result<Key> {
    let default_max_age = match scheme {
        Scheme::KheishV1 => DEFAULT_MAX_AGE_SECS,
        Scheme::SlackV0 => crate::ingress::auth::SLACK_MAX_AGE_SECS,
    };
    let plain = |secret: Secret, origin: String| -> Result<Key> {
        ensure_not_blank(&secret, &origin)?;
        Ok(Key {
            secret,
            bearer: None,
            max_age_secs: default_max_age,
        })
    };
    if let Some(var) = &args.secret_env {
        let origin = format!("`--secret-env {var}`");
        let secret = resolve_source(ctx, &SecretSource::Env(var.clone()), &origin)?;
        return plain(secret, origin);
    }
    if let Some(path) = &args.secret_file {
        let origin = format!("`--secret-file {}`", path.display());
        // UTF-8 text with one trailing newline removed, exactly as `rotate-secret --from-file`
        // reads it, so a value written from a file signs the same when read from that file.
        return plain(secrets::read_value_file(path)?, origin);
    }
    if let Some(slot) = &args.secret_ref {
        let origin = format!("`--secret-ref {slot}`");
        let secret = resolve_source(ctx, &SecretSource::StoreRef(slot.clone()), &origin)?;
        return plain(secret, origin);
    }
    let Some(name) = &args.connector else {
        // clap's required `secret` group guarantees one of the four flags.
        return Err(usage(
            "pass one of `--connector`, `--secret-env`, `--secret-file`, `--secret-ref`",
        ));
    };
    connector_key(ctx, name, scheme)
}

/// `--connector NAME`: the HTTP connector's HMAC secret (or, with `--scheme slack`, the Slack
/// connector's signing secret) from the connector file.
fn connector_key(ctx: &Context, name: &str, scheme: Scheme) -> Result<Key> {
    let Some(file) = &ctx.connectors_config else {
        return Err(usage(
            "`--connector` needs the connector file: pass `--connectors-config FILE` or set \
KHEISH_CONNECTORS_CONFIG",
        ));
    };
    let loaded = crate::config::load(file)?;
    if loaded.has_errors() {
        for diagnostic in &loaded.diagnostics {
            ctx.out.diagnostic(diagnostic);
        }
        return Err(StatusError::new(
            ExitStatus::Unavailable,
            format!(
                "the connector file {} has errors, so connector `{name}` cannot be used; fix them \
(`kheishctl validate {}` lists them)",
                file.display(),
                file.display()
            ),
        )
        .into());
    }
    let config = &loaded.config;
    let (section, field, secret_field, bearer, max_age_secs) = match scheme {
        Scheme::KheishV1 => {
            let Some(c) = config.http(name) else {
                let known = config.http.iter().map(|c| c.common.name.as_str());
                return Err(not_found("http_connectors", name, file, known));
            };
            if !c.require_hmac_signature {
                ctx.out.warn(&format!(
                    "http_connectors[{name}] does not set `require_hmac_signature = true`, so its \
ingress does not check this signature"
                ));
            }
            (
                "http_connectors",
                "hmac_secret",
                c.hmac_secret.as_ref(),
                c.bearer_token.as_ref().map(|f| f.source.clone()),
                c.signature_max_age_secs,
            )
        }
        Scheme::SlackV0 => {
            let Some(c) = config.slack.iter().find(|c| c.common.name.as_str() == name) else {
                let known = config.slack.iter().map(|c| c.common.name.as_str());
                return Err(not_found("slack_connectors", name, file, known));
            };
            (
                "slack_connectors",
                "signing_secret",
                c.signing_secret.as_ref(),
                None,
                crate::ingress::auth::SLACK_MAX_AGE_SECS,
            )
        }
    };
    let Some(secret_field) = secret_field else {
        return Err(StatusError::new(
            ExitStatus::Failure,
            format!(
                "{section}[{name}] has no `{field}` configured, so there is nothing to sign \
with; set `{field}_env`, `{field}_secret_ref` or `{field}` in {}",
                file.display()
            ),
        )
        .into());
    };
    let origin = format!("`{section}[{name}].{}`", secret_field.key);
    let secret = resolve_source(ctx, &secret_field.source, &origin)?;
    ensure_not_blank(&secret, &origin)?;
    Ok(Key {
        secret,
        bearer,
        max_age_secs,
    })
}

fn not_found<'a>(
    section: &str,
    name: &str,
    file: &Path,
    known: impl Iterator<Item = &'a str>,
) -> anyhow::Error {
    let known: Vec<String> = known.map(|n| format!("`{n}`")).collect();
    let listing = if known.is_empty() {
        format!("it has no {section}")
    } else {
        format!("known {section}: {}", known.join(", "))
    };
    StatusError::new(
        ExitStatus::Failure,
        format!(
            "no {section} entry named `{name}` in {}; {listing}",
            file.display()
        ),
    )
    .into()
}

/// Resolves a secret source through the shared secret resolution (`secrets::resolve`); the
/// state root's secret store is opened only for a store ref. `origin` names the source in the
/// error; the exit status is the one the secret error asks for (4 for an unusable store).
fn resolve_source(ctx: &Context, source: &SecretSource, origin: &str) -> Result<Secret> {
    let res = match source {
        SecretSource::StoreRef(_) => secrets::SecretStore::open_existing(&ctx.state_root)
            .and_then(|store| secrets::resolve(source, store.as_ref(), &process_env)),
        SecretSource::Env(_) | SecretSource::Inline(_) => {
            secrets::resolve(source, None, &process_env)
        }
    };
    res.map_err(|e| {
        let status = crate::exit::secret_status(&e);
        anyhow::Error::new(e).context(StatusError::new(
            status,
            format!("reading the secret named by {origin}"),
        ))
    })
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn ensure_not_blank(secret: &Secret, origin: &str) -> Result<()> {
    if secret.is_blank() {
        anyhow::bail!(
            "the secret from {origin} is empty or only whitespace; refusing to sign with it"
        );
    }
    Ok(())
}

/// `--body FILE|-`: the raw bytes, unchanged (no newline stripping: the MAC covers every byte).
fn read_body(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut body = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut body)
            .context("reading the body from standard input")?;
        return Ok(body);
    }
    std::fs::read(path).with_context(|| format!("reading the body file {}", path.display()))
}

/// Tells the operator when ingress would refuse `timestamp` as stale right now.
fn note_if_stale(ctx: &Context, scheme: Scheme, timestamp: i64, max_age_secs: u32) -> Result<()> {
    let skew = now_unix()?.saturating_sub(timestamp);
    if skew.unsigned_abs() > u64::from(max_age_secs) {
        ctx.out.info(&format!(
            "`{}: {timestamp}` is {} seconds in the {}; ingress accepts at most {max_age_secs}, so \
it would refuse this request as stale",
            scheme.timestamp_header(),
            skew.unsigned_abs(),
            if skew >= 0 { "past" } else { "future" },
        ));
    }
    Ok(())
}

fn now_unix() -> Result<i64> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970; pass `--timestamp UNIX`")?;
    i64::try_from(since_epoch.as_secs()).context("the system clock is out of range")
}

/// The ingress route of a connector (SPEC §5.1).
fn ingress_path(scheme: Scheme, name: &str) -> String {
    match scheme {
        Scheme::KheishV1 => format!("/v1/connectors/http/{name}"),
        Scheme::SlackV0 => format!("/v1/connectors/slack/{name}"),
    }
}

/// Upper-cases `--method` and checks it is an HTTP token (RFC 9110 `tchar`s), so it cannot
/// smuggle a `:` into the canonical string.
fn normalize_method(raw: &str) -> Result<String, String> {
    let method = raw.trim().to_ascii_uppercase();
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(tchar) {
        return Err(format!(
            "`--method {raw}` is not an HTTP method (for example POST)"
        ));
    }
    Ok(method)
}

fn usage(message: impl Into<String>) -> anyhow::Error {
    StatusError::new(ExitStatus::Usage, message).into()
}

/// The request target that is signed, and the URL curl is given.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Path and query exactly as they go on the request line (never re-encoded).
    path_and_query: String,
    /// `--url` as written (without a fragment), or the default base URL plus `--path`.
    curl_url: String,
}

impl Target {
    /// `--url`: the target is everything after the authority, byte for byte; no path means `/`.
    /// The URL is parsed only to validate it, never to rewrite it (parsers normalise
    /// percent-encoding and dot segments, which would change the signed bytes).
    fn from_url(raw: &str) -> Result<Target, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("`--url {raw}` is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`--url {raw}`: use an http:// or https:// URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "`--url`: credentials do not go in URLs; the bearer token is sent as a header"
                    .into(),
            );
        }
        let without_fragment = raw.trim().split('#').next().unwrap_or_default();
        let after_scheme = ["http://", "https://"]
            .iter()
            .find_map(|prefix| {
                without_fragment
                    .get(..prefix.len())
                    .filter(|head| head.eq_ignore_ascii_case(prefix))
                    .map(|_| &without_fragment[prefix.len()..])
            })
            .ok_or_else(|| format!("`--url {raw}`: write it as http://HOST[:PORT]/PATH"))?;
        let authority_end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
        if after_scheme[..authority_end].contains('\\') {
            return Err(format!(
                "`--url {raw}`: a backslash is not allowed in the host"
            ));
        }
        let rest = &after_scheme[authority_end..];
        let path_and_query = match rest.as_bytes().first() {
            None => "/".to_string(),
            Some(b'?') => format!("/{rest}"),
            Some(_) => rest.to_string(),
        };
        check_request_target("--url", &path_and_query)?;
        Ok(Target {
            path_and_query,
            curl_url: without_fragment.to_string(),
        })
    }

    /// `--path` (or a connector's route): sent to the `serve` default address.
    fn from_path(path: &str) -> Result<Target, String> {
        if !path.starts_with('/') {
            return Err(format!(
                "`--path {path}` must start with `/` (for example /v1/connectors/http/orders)"
            ));
        }
        check_request_target("--path", path)?;
        Ok(Target {
            path_and_query: path.to_string(),
            curl_url: format!("{DEFAULT_BASE_URL}{path}"),
        })
    }
}

/// A request target must be written as it is sent: visible ASCII only, no fragment, no
/// backslash. Anything else would be encoded by the client and no longer match the signature.
fn check_request_target(flag: &str, target: &str) -> Result<(), String> {
    if let Some(bad) = target
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '#' || c == '\\')
    {
        return Err(format!(
            "`{flag}`: the request target contains {bad:?}; write it exactly as sent, \
percent-encoded (spaces as %20, non-ASCII as UTF-8 %XX), without a fragment"
        ));
    }
    Ok(())
}

/// A ready-to-run curl command for the signed request.
struct CurlCommand<'a> {
    method: &'a str,
    url: &'a str,
    headers: [(&'static str, String); 2],
    /// `--body` as given; `-` means the command reads the body from standard input.
    body: &'a Path,
    /// The connector's bearer token source; the value itself is never printed.
    bearer: Option<&'a SecretSource>,
    /// `--curl-fail`: exit non-zero on an HTTP error status (`--fail-with-body`).
    fail: bool,
}

impl CurlCommand<'_> {
    /// The command as lines: comments first, then `curl … \` continuation lines.
    fn render(&self) -> Result<Vec<String>> {
        let mut comments = Vec::new();
        let mut args: Vec<String> = vec![
            if self.fail {
                "curl -sS --fail-with-body --path-as-is".to_string()
            } else {
                "curl -sS --path-as-is".to_string()
            },
            format!("-X {}", shell_quote(self.method)),
            format!("-H {}", shell_quote("Content-Type: application/json")),
        ];
        for (name, value) in &self.headers {
            args.push(format!("-H {}", shell_quote(&format!("{name}: {value}"))));
        }
        match self.bearer {
            None => {}
            Some(SecretSource::Env(var)) if is_shell_identifier(var) => {
                // Double quotes so the shell expands the variable; the value never appears here.
                args.push(format!("-H \"Authorization: Bearer ${var}\""));
            }
            Some(source) => {
                let where_ = match source {
                    SecretSource::StoreRef(slot) => format!("secret ref `{slot}`"),
                    SecretSource::Env(var) => format!("environment variable `{var}`"),
                    SecretSource::Inline(_) => "written inline in the connector file".into(),
                };
                comments.push(format!(
                    "# this connector also requires its bearer token ({where_}): add \
-H \"Authorization: Bearer <token>\""
                ));
            }
        }
        if self.body == Path::new("-") {
            comments.push(
                "# the body was read from standard input: pipe the same bytes into this command \
(for example `< body.json`)"
                    .to_string(),
            );
            args.push("--data-binary @-".to_string());
        } else {
            let path = body_path_text(self.body)?;
            args.push(format!(
                "--data-binary {}",
                shell_quote(&format!("@{path}"))
            ));
        }
        args.push(shell_quote(self.url).into_owned());
        let last = args.len() - 1;
        let mut lines = comments;
        for (idx, arg) in args.into_iter().enumerate() {
            let indent = if idx == 0 { "" } else { "  " };
            let cont = if idx == last { "" } else { " \\" };
            lines.push(format!("{indent}{arg}{cont}"));
        }
        Ok(lines)
    }
}

fn body_path_text(path: &Path) -> Result<String> {
    path.to_str().map(str::to_string).ok_or_else(|| {
        anyhow::anyhow!(
            "the body path {} is not UTF-8, so it cannot be written into a curl command; use \
`--format headers`",
            PathBuf::from(path).display()
        )
    })
}

fn is_shell_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// POSIX shell quoting: words made only of safe characters stay bare, anything else is single
/// quoted (with `'` written as `'\''`).
fn shell_quote(word: &str) -> Cow<'_, str> {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b);
    if !word.is_empty() && word.bytes().all(safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_url(raw: &str, expected: Result<(&str, &str), &str>) {
        let got = Target::from_url(raw);
        match expected {
            Ok((path, curl)) => assert_eq!(
                got,
                Ok(Target {
                    path_and_query: path.into(),
                    curl_url: curl.into()
                }),
                "{raw}"
            ),
            Err(needle) => {
                let err = got.expect_err(raw);
                assert!(err.contains(needle), "{raw}: {err}");
            }
        }
    }

    fn check_quote(word: &str, expected: &str) {
        assert_eq!(shell_quote(word), expected, "{word:?}");
    }

    fn check_method(raw: &str, expected: Option<&str>) {
        assert_eq!(normalize_method(raw).ok().as_deref(), expected, "{raw:?}");
    }

    #[test]
    fn url_targets_are_kept_verbatim() {
        let spec = "/v1/connectors/http/orders?source=a%2Fb&attempt=1";
        let url = format!("http://127.0.0.1:4000{spec}");
        check_url(&url, Ok((spec, &url)));
        check_url(
            "https://gw.example.com",
            Ok(("/", "https://gw.example.com")),
        );
        check_url(
            "https://gw.example.com/",
            Ok(("/", "https://gw.example.com/")),
        );
        check_url("http://h?x=1", Ok(("/?x=1", "http://h?x=1")));
        check_url(
            "http://h/a/../b/%7e",
            Ok(("/a/../b/%7e", "http://h/a/../b/%7e")),
        );
        check_url("HTTP://h/p#frag", Ok(("/p", "HTTP://h/p")));
        check_url("http://h/p?q=%2F#f", Ok(("/p?q=%2F", "http://h/p?q=%2F")));
    }

    #[test]
    fn bad_urls_are_refused() {
        check_url("not a url", Err("is not a URL"));
        check_url("ftp://h/p", Err("http:// or https://"));
        check_url("http://user:pw@h/p", Err("credentials"));
        check_url("http:h/p", Err("write it as"));
        check_url("http://h/a b", Err("write it exactly as sent"));
        check_url("http://h/caf\u{e9}", Err("write it exactly as sent"));
        check_url("http://h\\x/p", Err("backslash"));
    }

    #[test]
    fn paths() {
        assert_eq!(
            Target::from_path("/v1/connectors/http/orders?x=1"),
            Ok(Target {
                path_and_query: "/v1/connectors/http/orders?x=1".into(),
                curl_url: "http://127.0.0.1:4000/v1/connectors/http/orders?x=1".into(),
            })
        );
        assert!(Target::from_path("v1/x").is_err());
        assert!(Target::from_path("/x#y").is_err());
        assert!(Target::from_path("/x y").is_err());
    }

    #[test]
    fn methods() {
        check_method("POST", Some("POST"));
        check_method("post", Some("POST"));
        check_method(" put ", Some("PUT"));
        check_method("M-SEARCH", Some("M-SEARCH"));
        check_method("", None);
        check_method("PO ST", None);
        check_method("POST:", None);
    }

    #[test]
    fn quoting() {
        check_quote("@payload.json", "@payload.json");
        check_quote("POST", "POST");
        check_quote("X-Kheish-Timestamp: 1", "'X-Kheish-Timestamp: 1'");
        check_quote("http://h/p?a=1&b=2", "'http://h/p?a=1&b=2'");
        check_quote("@it's.json", r"'@it'\''s.json'");
        check_quote("$HOME", "'$HOME'");
        check_quote("", "''");
    }

    #[test]
    fn shell_identifiers() {
        assert!(is_shell_identifier("ORDERS_TOKEN"));
        assert!(is_shell_identifier("_x1"));
        assert!(!is_shell_identifier("1X"));
        assert!(!is_shell_identifier("A-B"));
        assert!(!is_shell_identifier("A$(rm)"));
        assert!(!is_shell_identifier(""));
    }

    fn curl(body: &str, bearer: Option<SecretSource>) -> Vec<String> {
        CurlCommand {
            method: "POST",
            url: "http://127.0.0.1:4000/v1/connectors/http/orders?a=1",
            headers: [
                ("X-Kheish-Timestamp", "1710000000".into()),
                ("X-Kheish-Signature", "v1=ab".into()),
            ],
            body: Path::new(body),
            bearer: bearer.as_ref(),
            fail: false,
        }
        .render()
        .expect("renders")
    }

    #[test]
    fn curl_command_shape() {
        assert_eq!(
            curl("payload.json", None),
            [
                "curl -sS --path-as-is \\",
                "  -X POST \\",
                "  -H 'Content-Type: application/json' \\",
                "  -H 'X-Kheish-Timestamp: 1710000000' \\",
                "  -H 'X-Kheish-Signature: v1=ab' \\",
                "  --data-binary @payload.json \\",
                "  'http://127.0.0.1:4000/v1/connectors/http/orders?a=1'",
            ]
        );
    }

    #[test]
    fn curl_with_stdin_body_reads_stdin_again() {
        let lines = curl("-", None);
        assert!(lines[0].starts_with("# the body was read from standard input"));
        assert!(lines.contains(&"  --data-binary @- \\".to_string()));
    }

    #[test]
    fn curl_bearer_never_contains_a_value() {
        let env = curl("b.json", Some(SecretSource::Env("ORDERS_TOKEN".into())));
        assert!(env.contains(&"  -H \"Authorization: Bearer $ORDERS_TOKEN\" \\".to_string()));
        let inline = curl(
            "b.json",
            Some(SecretSource::Inline(Secret::new("s3cr3t".into()))),
        );
        assert!(inline[0]
            .starts_with("# this connector also requires its bearer token (written inline"));
        assert!(!inline.join("\n").contains("s3cr3t"));
        let slot = curl(
            "b.json",
            Some(SecretSource::StoreRef(
                "connectors.http.orders.bearer_token".into(),
            )),
        );
        assert!(slot[0].contains("secret ref `connectors.http.orders.bearer_token`"));
        let weird_env = curl("b.json", Some(SecretSource::Env("A-B".into())));
        assert!(weird_env[0].contains("environment variable `A-B`"));
    }
}
