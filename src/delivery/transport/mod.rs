//! Delivery transports, one file per plugin, and the one transport registry of this build
//! ([`for_this_build`]), used by `serve` and `drain-deliveries` alike.
//!
//! Adding a delivery plugin is one file here and one line in [`for_this_build`] (plus its
//! `ReplyPlugin::served` entry, so targets of the plugin are accepted when stored).

pub mod external;
pub mod http;
pub mod slack;
pub mod telegram;

use std::sync::Arc;

use super::Transports;
use crate::model::reply::ReplyPlugin;
use crate::net::slack_api::SlackClients;
use crate::registry::Registry;

/// Every transport this build has. A plugin without one is refused when a reply target is
/// stored ([`ReplyPlugin::served`]), and a target stored before (an older build, a direct
/// database edit) dead-letters as `plugin_unavailable`.
///
/// `connectors`: the live connector registry the `external` transport looks its connectors up
/// in (`serve` passes `App.registry`, so reloads apply at once); `None` when the process has no
/// connector configuration, which makes external and telegram attempts retryable
/// `connector_config_unavailable`. `sidecar_stats` receives the external transport's counters;
/// `slack_api` holds the Slack Web API clients and their call counters (shared with Slack
/// ingress in `serve`); `telegram_stats` counts the Bot API calls of the telegram transport.
pub fn for_this_build(
    connectors: Option<Arc<Registry>>,
    sidecar_stats: Arc<external::SidecarStats>,
    slack_api: Arc<SlackClients>,
    telegram_stats: Arc<crate::net::telegram_api::ApiStats>,
) -> Transports {
    Transports::new()
        .with(ReplyPlugin::Http, Arc::new(http::HttpTransport::new()))
        .with(
            ReplyPlugin::Slack,
            Arc::new(slack::SlackTransport::new(connectors.clone(), slack_api)),
        )
        .with(
            ReplyPlugin::Telegram,
            Arc::new(telegram::TelegramTransport::new(
                connectors.clone(),
                telegram_stats,
            )),
        )
        .with(
            ReplyPlugin::External,
            Arc::new(external::ExternalTransport::new(connectors, sidecar_stats)),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_plugin_has_a_transport_and_no_other() {
        let transports = for_this_build(None, Arc::default(), Arc::default(), Arc::default());
        for plugin in [
            ReplyPlugin::Http,
            ReplyPlugin::Slack,
            ReplyPlugin::Telegram,
            ReplyPlugin::External,
        ] {
            assert_eq!(
                transports.get(plugin).is_some(),
                plugin.served(),
                "{plugin:?}: transport registry and ReplyPlugin::served disagree"
            );
        }
    }
}
