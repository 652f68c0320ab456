//! The city's trust list and this node's published key: adopting the list
//! held at start, publishing a fresh one and rolling the root over (the
//! city only), revocations as they apply to links, and the `NodeKey` record
//! through which every node learns this node's origin certificate.

use std::sync::Arc;

use prost::Message;
use tiersync_proto::types::DivisionCode;
use tiersync_proto::wire;
use tracing::{info, warn};

use super::{Node, NodeError, city_of, owner_code};
use crate::identity::keyring::CheckedTrustList;
use crate::identity::origin::{RootIssuer, TRUST_LIST_VALIDITY};
use crate::kinds::{KEY_NODE, KEY_TRUST_LIST, KIND_NODE_KEY, KIND_TRUST_LIST};
use crate::store::{AuditNote, StoreError};

impl Node {
    /// Publishes this node's origin certificate as its `NodeKey` record (to
    /// the whole deployment) unless the record already lists it; earlier
    /// certificates stay listed so older records still verify.
    pub async fn publish_own_key(&self) -> Result<(), NodeError> {
        let held = self
            .store
            .lookup(KIND_NODE_KEY, KEY_NODE, self.code.as_str())
            .await?
            .into_iter()
            .find(|s| owner_code(&s.record).as_ref() == Ok(&self.code));
        let mut node_key = match &held {
            Some(s) => wire::NodeKey::decode(&s.record.payload[..]).unwrap_or_default(),
            None => wire::NodeKey::default(),
        };
        let mine = self.identity.cert_der().to_vec();
        if !node_key.certificates.contains(&mine) {
            node_key.certificates.push(mine);
            let stored = self
                .put_everywhere(
                    held.as_ref(),
                    KIND_NODE_KEY,
                    node_key.encode_to_vec(),
                    KEY_NODE,
                    AuditNote::write("node", false),
                )
                .await?;
            info!(
                certificates = node_key.certificates.len(),
                "origin key published"
            );
            let _ = self.keyring.learn(&stored.record);
        } else if let Some(s) = &held {
            let _ = self.keyring.learn(&s.record);
        }
        Ok(())
    }

    /// Why `peer` may no longer link to this node, if the trust list held
    /// revokes it as of now.
    pub fn revoked_now(&self, peer: &DivisionCode) -> Option<String> {
        let revocation = self.keyring.revocation(peer.as_str())?;
        (self.clock.now_ms() >= revocation.effective_at_ms).then(|| {
            format!(
                "node `{peer}` is revoked in trust list {} ({}, from {} ms since the epoch)",
                self.keyring.trust_list().map_or(0, |b| b.sequence),
                revocation.reason,
                revocation.effective_at_ms
            )
        })
    }

    /// Adopts `body` if it is newer than the list held; returns whether it
    /// was.
    pub(crate) fn adopt_trust_list(&self, list: CheckedTrustList) -> bool {
        let (sequence, revoked) = (list.body.sequence, list.body.revocations.len());
        let adopted = self.keyring.adopt(list);
        if adopted {
            info!(sequence, revoked, "trust list adopted");
            self.refresh_trust_metrics();
        }
        adopted
    }

    /// Sets the trust list gauges (staleness moves with the clock, so this
    /// also runs periodically).
    pub fn refresh_trust_metrics(&self) {
        let status = self.keyring.trust_status(self.clock.now_ms());
        self.metrics.trust_list_sequence.set(status.sequence as i64);
        self.metrics.trust_list_stale.set(status.stale as i64);
        self.metrics
            .trust_list_next_update
            .set(status.next_update_ms / 1000);
    }

    /// Adopts the trust list held in the store (at start).
    pub async fn load_trust_list(&self) -> Result<(), StoreError> {
        let city = city_of(&self.code);
        for held in self
            .store
            .lookup(KIND_TRUST_LIST, KEY_TRUST_LIST, city.as_str())
            .await?
        {
            match self.keyring.check_trust_list(&held.record) {
                Ok(list) => {
                    self.adopt_trust_list(list);
                }
                Err(reason) => warn!(%reason, "stored trust list unusable"),
            }
        }
        self.refresh_trust_metrics();
        Ok(())
    }

    /// At the city: publishes a new trust list (the next sequence, valid
    /// for [`TRUST_LIST_VALIDITY`]) with `revoke` added.
    pub async fn publish_trust_list(
        &self,
        revoke: Option<wire::Revocation>,
    ) -> Result<wire::TrustListBody, NodeError> {
        let issuer = self.current_root_issuer()?;
        self.publish_list(&issuer, revoke, Vec::new()).await
    }

    /// At the city: rolls the trust root over. A successor root with a fresh
    /// key (written to `key_out`, which must not exist) is announced in a
    /// list the current root signs, then takes over: the next list is signed
    /// by it and carries the chain of endorsements back to the first root,
    /// and origin certificates are issued by it from now on. The operator
    /// points trust.root_key at `key_out` before the next restart.
    pub async fn rollover_root(
        &self,
        key_out: &std::path::Path,
    ) -> Result<wire::TrustListBody, NodeError> {
        let current = self.current_root_issuer()?;
        let (next, key_pem) = current
            .successor(&self.code)
            .map_err(|e| NodeError::Invalid {
                field: "trust",
                reason: e.to_string(),
            })?;
        crate::identity::pki::write_new_private(key_out, &key_pem).map_err(|e| {
            NodeError::Invalid {
                field: "key_out",
                reason: format!("cannot write {}: {e}", key_out.display()),
            }
        })?;
        self.publish_list(&current, None, next.cert_der().to_vec())
            .await?;
        let next = Arc::new(next);
        *self.root_issuer.write().expect("root issuer lock") = Some(next.clone());
        let body = self.publish_list(&next, None, Vec::new()).await?;
        info!(key = %key_out.display(), "trust root rolled over; point trust.root_key at the new key");
        Ok(body)
    }

    /// The trust root this node issues with, if it is the city.
    pub fn root_issuer(&self) -> Option<Arc<RootIssuer>> {
        self.root_issuer.read().expect("root issuer lock").clone()
    }

    pub fn set_root_issuer(&self, issuer: RootIssuer) {
        *self.root_issuer.write().expect("root issuer lock") = Some(Arc::new(issuer));
    }

    fn current_root_issuer(&self) -> Result<Arc<RootIssuer>, NodeError> {
        self.root_issuer().ok_or_else(|| NodeError::Invalid {
            field: "trust",
            reason: format!(
                "node `{}` holds no trust root key (trust.root_key, the city only), so it cannot publish trust lists",
                self.code
            ),
        })
    }

    /// Signs and publishes the next trust list with `issuer`.
    async fn publish_list(
        &self,
        issuer: &RootIssuer,
        revoke: Option<wire::Revocation>,
        successor_root: Vec<u8>,
    ) -> Result<wire::TrustListBody, NodeError> {
        let held = self
            .store
            .lookup(KIND_TRUST_LIST, KEY_TRUST_LIST, self.code.as_str())
            .await?
            .into_iter()
            .next();
        let previous = match &held {
            Some(s) => self
                .keyring
                .check_trust_list(&s.record)
                .ok()
                .map(|c| c.body),
            None => None,
        };
        let now = self.clock.now_ms();
        let mut revocations = previous
            .as_ref()
            .map(|b| b.revocations.clone())
            .unwrap_or_default();
        if let Some(r) = revoke {
            DivisionCode::parse(&r.node).map_err(|e| NodeError::Invalid {
                field: "node",
                reason: e.to_string(),
            })?;
            if r.node == self.code.as_str() {
                return Err(NodeError::Invalid {
                    field: "node",
                    reason: "the city cannot revoke itself".into(),
                });
            }
            if r.reason.is_empty() {
                return Err(NodeError::Invalid {
                    field: "reason",
                    reason: "say why, e.g. keyCompromise or cessationOfOperation".into(),
                });
            }
            revocations.push(wire::Revocation {
                effective_at_ms: if r.effective_at_ms == 0 {
                    now
                } else {
                    r.effective_at_ms
                },
                revoked_at_ms: now,
                ..r
            });
        }
        let body = wire::TrustListBody {
            sequence: previous.as_ref().map_or(0, |b| b.sequence) + 1,
            issued_at_ms: now,
            next_update_ms: now + TRUST_LIST_VALIDITY.as_millis() as i64,
            revocations,
            successor_root,
        };
        let list = issuer.sign_trust_list(&body);
        let audit = AuditNote::event("trust", format!("published {}", trust_list_summary(&body)));
        let stored = self
            .put_everywhere(
                held.as_ref(),
                KIND_TRUST_LIST,
                list.encode_to_vec(),
                KEY_TRUST_LIST,
                audit,
            )
            .await?;
        info!(
            sequence = body.sequence,
            revoked = body.revocations.len(),
            "trust list published"
        );
        let checked = self
            .keyring
            .check_trust_list(&stored.record)
            .map_err(|reason| NodeError::Invalid {
                field: "trust",
                reason: format!("the list just signed does not check out: {reason}"),
            })?;
        self.adopt_trust_list(checked);
        Ok(body)
    }
}

/// A trust list as an audit detail: its sequence and revocations.
pub(super) fn trust_list_summary(body: &wire::TrustListBody) -> String {
    let revoked = if body.revocations.is_empty() {
        "none".to_owned()
    } else {
        body.revocations
            .iter()
            .map(|r| format!("{} ({})", r.node, r.reason))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "trust list sequence {}; revocations: {revoked}",
        body.sequence
    )
}
