//! Stored assets as deliveries see them: the descriptors a delivery's output references (read
//! when a delivery is claimed, so the `external` transport can describe them to its sidecar),
//! and the bytes of one asset for the sidecar asset route (SPEC §5.1), served only while a
//! delivery that references it is still open.

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use super::{Store, StoreError};
use crate::model::delivery::{referenced_asset_ids, AssetInfo};
use crate::model::reply::{ReplyPlugin, ReplyTarget};

/// The bytes of one stored asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetBytes {
    pub media_type: String,
    pub file_name: Option<String>,
    pub data: Vec<u8>,
}

/// An asset of an open delivery: the delivery's target (the caller checks who may download)
/// and the asset's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDeliveryAsset {
    pub target: ReplyTarget,
    pub asset: AssetBytes,
}

/// The descriptors of the stored assets among `ids`, in the order of `ids`; ids without a
/// stored asset are left out.
pub(crate) fn asset_infos(conn: &Connection, ids: &[String]) -> rusqlite::Result<Vec<AssetInfo>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let found = conn
            .prepare_cached(
                "SELECT media_type, file_name, size, sha256 FROM assets WHERE asset_id = ?1",
            )?
            .query_row([id], |row| {
                Ok(AssetInfo {
                    asset_id: id.clone(),
                    media_type: row.get(0)?,
                    file_name: row.get(1)?,
                    size: row.get::<_, i64>(2)?.max(0) as u64,
                    sha256: row.get(3)?,
                })
            })
            .optional()?;
        out.extend(found);
    }
    Ok(out)
}

impl Store {
    /// Asset `asset_id` when delivery `delivery_id` is open (`pending` or `retrying`: not yet
    /// delivered nor dead-lettered) and its output's parts reference the asset; `None`
    /// otherwise (unknown delivery or asset, a finished delivery, an unreferenced asset).
    pub fn open_delivery_asset(
        &self,
        delivery_id: &str,
        asset_id: &str,
    ) -> Result<Option<OpenDeliveryAsset>, StoreError> {
        let op = "reading a delivery asset";
        let found: Option<(String, String, Option<String>)> = self
            .conn()
            .prepare_cached(
                "SELECT d.plugin, d.address, o.parts FROM deliveries d
                 JOIN run_outputs o ON o.output_id = d.output_id
                 WHERE d.delivery_id = ?1 AND d.status IN ('pending', 'retrying')",
            )
            .and_then(|mut st| {
                st.query_row([delivery_id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
            })
            .map_err(|e| self.err(op, e))?;
        let Some((plugin, address, parts)) = found else {
            return Ok(None);
        };
        // A row this binary cannot read (an unknown plugin, unparseable parts) references
        // nothing it could serve.
        let Ok(plugin) = ReplyPlugin::parse(&plugin) else {
            return Ok(None);
        };
        let parts: Vec<Value> = parts
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        if !referenced_asset_ids(&parts).iter().any(|id| id == asset_id) {
            return Ok(None);
        }
        let asset = self
            .conn()
            .prepare_cached("SELECT media_type, file_name, data FROM assets WHERE asset_id = ?1")
            .and_then(|mut st| {
                st.query_row([asset_id], |row| {
                    Ok(AssetBytes {
                        media_type: row.get(0)?,
                        file_name: row.get(1)?,
                        data: row.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(op, e))?;
        Ok(asset.map(|asset| OpenDeliveryAsset {
            target: ReplyTarget { plugin, address },
            asset,
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::run::NewAsset;
    use crate::store::deliveries::fixture::*;
    use crate::store::deliveries::{ClaimFilter, Settlement};
    use crate::store::runs::NewRunOutput;

    fn external(connector: &str) -> ReplyTarget {
        ReplyTarget::new(
            ReplyPlugin::External,
            &json!({"connector": connector, "route": "{}"}).to_string(),
        )
        .unwrap()
        .0
    }

    /// Queues one output of run `run_id` whose parts reference `refs`, to `target`;
    /// returns the delivery id.
    fn queue_with_assets(
        store: &Store,
        run_id: &str,
        refs: &[&str],
        target: ReplyTarget,
    ) -> String {
        run(store, run_id, &[], &[target]);
        let parts = refs
            .iter()
            .map(|id| json!({"type": "asset_reference", "asset_id": id}))
            .collect();
        let (_, queued) = store
            .add_output_queued(
                run_id,
                None,
                &NewRunOutput {
                    content: None,
                    parts: Some(parts),
                    reply_targets: None,
                },
                T0,
            )
            .unwrap();
        queued.pending[0].clone()
    }

    fn insert(store: &Store, id: &str, data: &[u8]) {
        store
            .ingress_ops()
            .insert_asset(&NewAsset {
                asset_id: id.into(),
                media_type: "text/plain".into(),
                file_name: Some("a.txt".into()),
                sha256: "ab".into(),
                data: data.to_vec(),
                now_ms: T0,
            })
            .unwrap();
    }

    #[test]
    fn claims_describe_referenced_assets_and_open_deliveries_serve_them() {
        let (_tmp, store) = store();
        insert(&store, "asset_a", b"hello");
        let id = queue_with_assets(&store, "run_a", &["asset_a", "asset_gone"], external("sc"));

        let served = store.open_delivery_asset(&id, "asset_a").unwrap().unwrap();
        assert_eq!(served.asset.data, b"hello");
        assert_eq!(served.asset.media_type, "text/plain");
        assert_eq!(served.target, external("sc"));
        assert_eq!(store.open_delivery_asset(&id, "asset_gone").unwrap(), None);
        assert_eq!(store.open_delivery_asset(&id, "asset_x").unwrap(), None);
        assert_eq!(store.open_delivery_asset("dlv_x", "asset_a").unwrap(), None);

        let claimed = store
            .claim_next("w", 60_000, T0, &ClaimFilter::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            claimed.job.assets,
            [AssetInfo {
                asset_id: "asset_a".into(),
                media_type: "text/plain".into(),
                file_name: Some("a.txt".into()),
                size: 5,
                sha256: "ab".into(),
            }],
            "the missing asset is left out"
        );
        let retry = Settlement::Retry {
            at_ms: T0 + 10,
            code: "x".into(),
            reason: "x".into(),
            http_status: None,
        };
        store
            .settle("w", &claimed, retry, T0, &Default::default())
            .unwrap();
        assert!(
            store.open_delivery_asset(&id, "asset_a").unwrap().is_some(),
            "retrying is still open"
        );
        let claimed = store
            .claim_next("w", 60_000, T0 + 20, &ClaimFilter::default())
            .unwrap()
            .unwrap();
        store
            .settle(
                "w",
                &claimed,
                Settlement::Delivered {
                    http_status: Some(200),
                },
                T0 + 20,
                &Default::default(),
            )
            .unwrap();
        assert_eq!(store.open_delivery_asset(&id, "asset_a").unwrap(), None);
    }
}
