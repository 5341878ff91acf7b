//! The Redis session store's local copies when the notifier's connection is cut: a replica
//! that missed messages re-reads the record once its subscription is back, so its copy
//! catches up without anybody waiting on the flow, and a waiter wakes either way.
//!
//! A file of its own because it kills pub/sub connections: this test process has its own
//! `redis-server`, on which these are the only ones.
//!
//! And, on a Redis Cluster, the repair of a principal's slot that a create or a removal cut
//! off between its two steps left held by no record.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arcp_gateway::{
    error::ErrorCode,
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

/// A new session of `principal`'s, under a cap of one.
fn alone(principal: &str) -> NewSession {
    NewSession {
        id: SessionId::generate(),
        principal: Principal::new(principal),
        features: Features::default(),
        epoch: Epoch(1),
        max_per_principal: 1,
    }
}

/// Milliseconds since the Unix epoch, `ago` before now.
fn unix_millis_ago(ago: Duration) -> u64 {
    let at = SystemTime::now() - ago;
    at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A slot held by no record (left so here by hand, as a replica that died between a create's
/// two steps would, or between a removal's) is freed by a create that finds its principal's
/// sessions full once the slot is older than the grace (30 s), and not before; the freed
/// session's create is marked given up, so that a late write of its record is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_slot_held_by_no_record_is_freed_after_the_grace() {
    let url = common::redis_cluster_url();
    let prefix = format!("arcp-test-{}", SessionId::generate());
    let store = RedisSessionStore::new(
        &Redis::open(url, &prefix).unwrap(),
        ReplicaInstance::start(ReplicaId::new("a")),
    );
    let nodes: Vec<String> = url
        .trim_start_matches("redis-cluster://")
        .split(',')
        .map(|node| format!("redis://{node}"))
        .collect();
    let mut admin = redis::cluster::ClusterClient::new(nodes)
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let joined = format!("{prefix}:{{sessions:erin}}:joined");
    let held_by = |member: &str, ago: Duration| {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(&joined).arg(unix_millis_ago(ago)).arg(member);
        cmd
    };

    // Younger than the grace: it may be a create between its steps, so it holds its slot.
    let young = SessionId::generate();
    let _: i64 = held_by(young.as_str(), Duration::from_secs(5))
        .query_async(&mut admin)
        .await
        .unwrap();
    let err = store.create(alone("erin")).await.err().expect("refused");
    assert_eq!(err.code(), ErrorCode::PermissionDenied, "{err}");

    // Older than the grace, with no record: it is freed, and the create takes its place.
    let _: i64 = held_by(young.as_str(), Duration::from_secs(60))
        .query_async(&mut admin)
        .await
        .unwrap();
    let created = store.create(alone("erin")).await.unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&joined)
        .arg(0)
        .arg(-1)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(members, vec![created.id().as_str().to_owned()]);
    let given_up: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}:{{{young}}}:given-up"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(given_up, "the freed session's create is marked given up");

    // A slot with a record is never taken, however old.
    let _: i64 = held_by(created.id().as_str(), Duration::from_secs(60))
        .query_async(&mut admin)
        .await
        .unwrap();
    let err = store.create(alone("erin")).await.err().expect("refused");
    assert_eq!(err.code(), ErrorCode::PermissionDenied, "{err}");
    assert!(store.open(created.id()).await.is_ok());

    // A removal deletes the record, then frees the slot: cut off between, the slot is freed
    // by the repair instead (once old enough, which it is here).
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:{{{}}}:session", created.id()))
        .query_async(&mut admin)
        .await
        .unwrap();
    store.create(alone("erin")).await.unwrap();
}
