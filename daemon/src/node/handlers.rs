//! The kind-handler seam: work that applied records of certain kinds call
//! for (answering amendments, issuing certificates), done by handlers the
//! app registers instead of branches in the arrival path.
//!
//! A handler runs after the records it is given have committed, so a crash
//! between the commit and its work loses nothing: at start every handler
//! runs once over what the store holds (`records: None`) and catches up.
//! Handlers must therefore be idempotent (the routed exchanges of
//! [`super::routed`] answer a request once).

use std::sync::Arc;

use async_trait::async_trait;
use tiersync_proto::wire;

use super::Node;
use crate::store::StoreError;

#[async_trait]
pub trait KindHandler: Send + Sync {
    /// The kinds whose arrival this handler acts on.
    fn kinds(&self) -> &'static [&'static str];

    /// Acts on `records` (applied records of its kinds), or with `None` on
    /// everything of its kinds the store holds.
    async fn arrived(
        &self,
        node: &Node,
        records: Option<&[wire::Record]>,
    ) -> Result<(), StoreError>;
}

impl Node {
    /// Installs the handlers (once, when the node is built) and runs each
    /// over what the store already holds.
    pub async fn start_handlers(
        &self,
        handlers: Vec<Arc<dyn KindHandler>>,
    ) -> Result<(), StoreError> {
        let handlers = self.handlers.get_or_init(|| handlers);
        for handler in handlers {
            handler.arrived(self, None).await?;
        }
        Ok(())
    }

    /// Hands each handler the applied records of its kinds.
    pub(crate) async fn after_commit(
        &self,
        applied: &[(u64, wire::Record)],
    ) -> Result<(), StoreError> {
        let Some(handlers) = self.handlers.get() else {
            return Ok(());
        };
        for handler in handlers {
            let kinds = handler.kinds();
            let mine: Vec<wire::Record> = applied
                .iter()
                .filter(|(_, r)| kinds.contains(&r.kind.as_str()))
                .map(|(_, r)| r.clone())
                .collect();
            if !mine.is_empty() {
                handler.arrived(self, Some(&mine)).await?;
            }
        }
        Ok(())
    }
}
