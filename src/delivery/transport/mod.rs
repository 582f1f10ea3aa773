//! Delivery transports, one file per plugin, and the one transport registry of this build
//! ([`for_this_build`]), used by `serve` and `drain-deliveries` alike.
//!
//! Adding a delivery plugin is one file here and one line in [`for_this_build`] (plus its
//! `ReplyPlugin::served` entry, so targets of the plugin are accepted when stored).

pub mod http;

use std::sync::Arc;

use super::Transports;
use crate::model::reply::ReplyPlugin;

/// Every transport this build has. A plugin without one is refused when a reply target is
/// stored ([`ReplyPlugin::served`]), and a target stored before (an older build, a direct
/// database edit) dead-letters as `plugin_unavailable`.
pub fn for_this_build() -> Transports {
    Transports::new().with(ReplyPlugin::Http, Arc::new(http::HttpTransport::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_plugin_has_a_transport_and_no_other() {
        let transports = for_this_build();
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
