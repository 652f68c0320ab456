//! Departments' subscription cursors, on every engine: forward only,
//! per department and name, and back to the start in a new epoch.

use super::Engine;

pub(super) async fn cursors_move_forward_within_an_epoch(engine: &mut dyn Engine) {
    let store = engine.fresh().await;
    assert_eq!(
        store
            .subscription_acked("civil-affairs", "dibao")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .subscription_ack("civil-affairs", "dibao", 5)
            .await
            .unwrap(),
        5
    );
    // never back
    assert_eq!(
        store
            .subscription_ack("civil-affairs", "dibao", 3)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        store.subscription_ack("health", "dibao", 2).await.unwrap(),
        2
    );
    assert_eq!(
        store
            .subscription_ack("civil-affairs", "other", 1)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .subscription_acked("civil-affairs", "dibao")
            .await
            .unwrap(),
        5
    );
    // A restored store renumbers its log: a cursor of the old epoch reads
    // as the start, and the first acknowledgement replaces it.
    store.renew_epoch().await.unwrap();
    let store = engine.reopen("511102").await.unwrap();
    assert_eq!(
        store
            .subscription_acked("civil-affairs", "dibao")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .subscription_ack("civil-affairs", "dibao", 2)
            .await
            .unwrap(),
        2
    );
}
