//! Subscriptions: a department receives the changes it may read, page by
//! page, from a durable cursor that moves only when it acknowledges. A
//! restarted department resumes after its last acknowledgement, so nothing
//! is skipped and nothing it acknowledged comes again (what it received but
//! did not acknowledge comes again: at-least-once, exactly-once after the
//! ack).
//!
//! Every page is read under the department's grants as they are at that
//! moment: a withdrawal that arrives, or an expiry that passes, ends the
//! stream with the refusal (checked on every change and every
//! [`RECHECK`] while idle).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tiersync_proto::pb::tiersync::adapter::v1 as adapter;
use tiersync_proto::wire;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::grant::Want;
use crate::node::{Node, NodeError, Reader};

/// How often an idle subscription re-checks its grant (expiry needs no
/// change to arrive).
pub const RECHECK: Duration = Duration::from_secs(5);
/// Records in a page unless the department asks otherwise.
pub const DEFAULT_PAGE: u32 = 500;
/// Most records in a page.
pub const MAX_PAGE: u32 = 5_000;

pub type SubscriptionStream =
    Pin<Box<dyn Stream<Item = Result<adapter::SubscribeResponse, Status>> + Send>>;

/// Checks a subscription name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn check_name(name: &str) -> Result<(), NodeError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NodeError::Invalid {
            field: "subscription",
            reason: format!(
                "`{name}` is not a subscription name (1 to 64 letters, digits, '-', '_' or '.')"
            ),
        })
    }
}

/// Opens `request`'s subscription for `department` at its acknowledged
/// cursor and streams pages until the department hangs up, the node stops,
/// or its grant no longer allows the reads.
pub async fn open(
    node: Arc<Node>,
    department: String,
    request: adapter::SubscribeRequest,
    cancel: CancellationToken,
) -> Result<SubscriptionStream, NodeError> {
    let page = match request.page_size {
        0 => DEFAULT_PAGE,
        n if n > MAX_PAGE => {
            return Err(NodeError::Invalid {
                field: "page_size",
                reason: format!("{n} is over the most a page holds, {MAX_PAGE}"),
            });
        }
        n => n,
    };
    let start = node
        .subscription_acked(&department, &request.subscription)
        .await?;
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(run(node, department, request, page, start, tx, cancel));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Commits `department`'s cursor of subscription `name` through `through`.
pub async fn acknowledge(
    node: &Node,
    department: &str,
    name: &str,
    through: u64,
) -> Result<u64, NodeError> {
    let head = node.head_seq().await?;
    if through > head {
        return Err(NodeError::Invalid {
            field: "through_seq",
            reason: format!(
                "{through} is past this node's newest change ({head}); acknowledge a page's through_seq"
            ),
        });
    }
    node.subscription_ack(department, name, through).await
}

async fn run(
    node: Arc<Node>,
    department: String,
    request: adapter::SubscribeRequest,
    page_size: u32,
    start: u64,
    tx: mpsc::Sender<Result<adapter::SubscribeResponse, Status>>,
    cancel: CancellationToken,
) {
    let purpose = request.purpose.unwrap_or_default();
    let area = match Node::parse_area("division_prefix", &request.division_prefix) {
        Ok(area) => area,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    let want = Want {
        kinds: &request.kinds,
        clear_fields: &purpose.clear_fields,
        area: area.as_ref(),
        matter_code: &purpose.matter_code,
        submit: false,
    };
    let mut head = node.subscribe_head();
    let mut position = start;
    let mut sent_through = start;
    // The first time it reaches the head, a subscription says so even with
    // nothing to deliver, so a department can tell "caught up" from "slow".
    let mut announced = false;
    // The page whose audit entries are being written while the next one is
    // read: pages go out in order, each once its entries committed.
    let mut in_flight: Option<JoinHandle<Result<Page, NodeError>>> = None;
    loop {
        head.borrow_and_update();
        let read = async {
            let access = node.access(&department, &want).await?;
            node.reads(Reader::Department(access))
                .subscription_page(position, page_size, &request.kinds)
                .await
        }
        .await;
        let sealed = match read {
            Ok(sealed) => sealed,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let (through, caught_up) = (sealed.through(), sealed.caught_up());
        let writing = tokio::spawn(sealed.commit());
        if let Some(previous) = in_flight.replace(writing)
            && !send(&tx, previous, &mut sent_through, &mut announced).await
        {
            return;
        }
        position = through;
        if caught_up {
            let last = in_flight.take().expect("just set");
            if !send(&tx, last, &mut sent_through, &mut announced).await {
                return;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tx.closed() => return,
                changed = head.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
    }
}

/// A page once its audit entries committed.
type Page = (Vec<(u64, wire::Record)>, u64, bool);

/// Sends the page `writing` yields once its audit entries commit, if it
/// has something to say; false when the stream is over (the department
/// hung up, or the page could not be audited, which ends it).
async fn send(
    tx: &mpsc::Sender<Result<adapter::SubscribeResponse, Status>>,
    writing: JoinHandle<Result<Page, NodeError>>,
    sent_through: &mut u64,
    announced: &mut bool,
) -> bool {
    let page = match writing.await {
        Ok(page) => page,
        Err(e) => Err(NodeError::Invalid {
            field: "subscription",
            reason: format!("the page's audit task failed: {e}"),
        }),
    };
    let (deliveries, through, caught_up) = match page {
        Ok(page) => page,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return false;
        }
    };
    if deliveries.is_empty() && !(caught_up && (through > *sent_through || !*announced)) {
        return true;
    }
    let response = adapter::SubscribeResponse {
        deliveries: deliveries
            .into_iter()
            .map(|(seq, record)| adapter::Delivery {
                seq,
                record: Some(record),
            })
            .collect(),
        through_seq: through,
        caught_up,
    };
    *sent_through = through;
    *announced |= caught_up;
    tx.send(Ok(response)).await.is_ok()
}
