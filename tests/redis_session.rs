//! The Redis session store's local copies when the notifier's connection is cut: a replica
//! that missed messages re-reads the record once its subscription is back, so its copy
//! catches up without anybody waiting on the flow, and a waiter wakes either way.
//!
//! A file of its own because it kills pub/sub connections: this test process has its own
//! `redis-server`, on which these are the only ones.

mod common;

use std::time::Duration;

use arcp_gateway::{
    ids::{Epoch, EventSeq, Principal, ReplicaId, ReplicaInstance, SessionId},
    protocol::Features,
    store::{
        redis::Redis,
        session::{redis::RedisSessionStore, Flow, NewSession, SessionStore},
    },
};

/// The ids of the server's pub/sub clients.
async fn pubsub_clients(admin: &mut redis::aio::MultiplexedConnection) -> Vec<u64> {
    let list: String = redis::cmd("CLIENT")
        .arg(&["LIST", "TYPE", "pubsub"])
        .query_async(admin)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(|id| id.parse().expect("a client id"))
        .collect()
}

/// Kills client `id`'s connection.
async fn kill(admin: &mut redis::aio::MultiplexedConnection, id: u64) {
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(admin)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "client {id} was connected");
}

/// Waits until replica A's notifier is subscribed again: two pub/sub clients, one not B's.
async fn resubscribed(admin: &mut redis::aio::MultiplexedConnection, b: u64) -> u64 {
    let mut found = None;
    let deadline = tokio::time::Instant::now() + common::FRAME_TIMEOUT;
    while found.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never resubscribed"
        );
        found = pubsub_clients(admin).await.into_iter().find(|&id| id != b);
        if found.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    found.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_catches_up_after_its_notifier_connection_was_killed() {
    let url = common::redis_url();
    let prefix = format!("arcp-test-{}", SessionId::generate());
    let replica_a = Redis::open(url, &prefix).unwrap();
    let replica_b = Redis::open(url, &prefix).unwrap();
    let (store_a, store_b) = (
        RedisSessionStore::new(&replica_a, ReplicaInstance::start(ReplicaId::new("a"))),
        RedisSessionStore::new(&replica_b, ReplicaInstance::start(ReplicaId::new("b"))),
    );
    let mut admin = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    let on_a = store_a
        .create(NewSession {
            id: SessionId::generate(),
            principal: Principal::new("alice"),
            features: Features::supported().negotiate(&["ack"]),
            epoch: Epoch(1),
            max_per_principal: usize::MAX,
        })
        .await
        .unwrap();
    // A's notifier is the only pub/sub client so far; then B's joins.
    let [mut notifier_a] = pubsub_clients(&mut admin).await[..] else {
        panic!("one pub/sub client, replica A's notifier");
    };
    let on_b = store_b.open(on_a.id()).await.unwrap();
    let [notifier_b] = pubsub_clients(&mut admin)
        .await
        .into_iter()
        .filter(|&id| id != notifier_a)
        .collect::<Vec<_>>()[..]
    else {
        panic!("one more pub/sub client, replica B's notifier");
    };

    // Cut off, A most likely misses B's delivery; nobody waits on A's flow, so only the
    // re-read on resubscribing can bring it.
    kill(&mut admin, notifier_a).await;
    assert!(on_b.record_delivered(Epoch(1), EventSeq(10)).await.unwrap());
    common::wait_until("A's copy to catch up with the delivery", || {
        on_a.flow().delivered == EventSeq(10)
    })
    .await;
    notifier_a = resubscribed(&mut admin, notifier_b).await;

    // And once more, with a task waiting on A's flow, which the change must wake.
    let waiting = {
        let on_a = on_a.clone();
        tokio::spawn(async move { on_a.wait_flow(&|flow: &Flow| !flow.attached).await })
    };
    kill(&mut admin, notifier_a).await;
    assert!(on_b.detach(Epoch(1)).await.unwrap());
    tokio::time::timeout(common::FRAME_TIMEOUT, waiting)
        .await
        .expect("the waiter on A woke")
        .unwrap();
    assert_eq!(
        on_a.flow(),
        Flow {
            epoch: Epoch(1),
            attached: false,
            delivered: EventSeq(10),
            acked: EventSeq::ZERO,
        }
    );

    // With its subscription back, A hears B's changes as they happen again.
    resubscribed(&mut admin, notifier_b).await;
    assert!(on_b.attach(Epoch(2), None, EventSeq(7)).await.unwrap());
    common::wait_until("A to hear of the attach", || on_a.flow().epoch == Epoch(2)).await;
    assert_eq!(on_a.flow().delivered, EventSeq(7));
}
