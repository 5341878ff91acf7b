//! Every store contract test (`tests/contract/`) against every store: the embedded memory
//! stores, the same wrapped so that every call suspends, and the Redis stores, on a real
//! `redis-server` and on a Redis Cluster of three. A store shared between replicas joins this
//! list and must pass the same suite.

mod common;
mod contract;

use std::time::Duration;

use arcp_gateway::{
    ids::{ReplicaId, SessionId},
    store::{
        log::LogLimits,
        redis::Redis,
        replicas::{Heartbeat, Registration},
        MemoryStores, Stores,
    },
};
use async_trait::async_trait;
use contract::{NoOutage, Outage};

fn memory(max_log_frames: usize) -> Stores {
    MemoryStores::new(max_log_frames).stores()
}

fn yielding_memory(max_log_frames: usize) -> Stores {
    contract::wrapped::yielding(memory(max_log_frames))
}

/// The stores in Redis, under keys of their own.
fn redis(max_log_frames: usize) -> Stores {
    redis_stores(
        &fresh_redis(),
        "replica-a",
        LogLimits::frames(max_log_frames),
    )
}

fn fresh_redis() -> Redis {
    let prefix = format!("arcp-test-{}", SessionId::generate());
    Redis::open(common::redis_url(), &prefix).expect("a redis address")
}

/// Every store in `redis`, as replica `replica` has them, the event logs within `limits`.
fn redis_stores(redis: &Redis, replica: &str, limits: LogLimits) -> Stores {
    Stores::redis(redis, &ReplicaId::new(replica), limits)
}

/// The stores in a Redis Cluster, under keys of their own.
fn redis_cluster(max_log_frames: usize) -> Stores {
    redis_stores(
        &fresh_cluster(),
        "replica-a",
        LogLimits::frames(max_log_frames),
    )
}

fn fresh_cluster() -> Redis {
    let prefix = format!("arcp-test-{}", SessionId::generate());
    Redis::open(common::redis_cluster_url(), &prefix).expect("a redis cluster address")
}

/// Two replicas on one Redis Cluster: the same keys, each with its own connections.
fn redis_cluster_replicas(max_log_frames: usize) -> (Stores, Stores) {
    let a = fresh_cluster();
    let b = Redis::open(common::redis_cluster_url(), a.prefix()).expect("a cluster address");
    let limits = LogLimits::frames(max_log_frames);
    (
        redis_stores(&a, "replica-a", limits),
        redis_stores(&b, "replica-b", limits),
    )
}

fn memory_replicas(max_log_frames: usize) -> (Stores, Stores) {
    let stores = memory(max_log_frames);
    (stores.clone(), stores)
}

fn memory_replicas_with_outage(max_log_frames: usize) -> (Stores, Stores, Box<dyn Outage>) {
    let (a, b) = memory_replicas(max_log_frames);
    (a, b, Box::new(NoOutage))
}

/// Two replicas on one Redis: the same keys, each with its own connections.
fn redis_replicas(max_log_frames: usize) -> (Stores, Stores) {
    let a = fresh_redis();
    redis_pair(&a, max_log_frames)
}

/// Replica A on `a`, and replica B on a Redis of its own with the same prefix.
fn redis_pair(a: &Redis, max_log_frames: usize) -> (Stores, Stores) {
    let b = Redis::open(common::redis_url(), a.prefix()).expect("a redis address");
    let limits = LogLimits::frames(max_log_frames);
    (
        redis_stores(a, "replica-a", limits),
        redis_stores(&b, "replica-b", limits),
    )
}

/// [`redis_replicas`], with replica A connecting as a Redis user of its own, whose channels an
/// [`AclOutage`] takes away.
fn redis_replicas_with_outage(max_log_frames: usize) -> (Stores, Stores, Box<dyn Outage>) {
    let outage = AclOutage::new(&[common::redis_url().to_owned()]);
    let url = common::redis_url().replacen(
        "redis://",
        &format!("redis://{}:{}@", outage.user, outage.user),
        1,
    );
    let prefix = format!("arcp-test-{}", SessionId::generate());
    let a = Redis::open(&url, &prefix).expect("a redis address");
    let (a, b) = redis_pair(&a, max_log_frames);
    (a, b, Box::new(outage))
}

/// [`redis_cluster_replicas`], with replica A connecting to every node as a Redis user of its
/// own, whose channels an [`AclOutage`] on every node takes away (ACLs are each node's own).
fn redis_cluster_replicas_with_outage(max_log_frames: usize) -> (Stores, Stores, Box<dyn Outage>) {
    let (scheme, nodes) = common::redis_cluster_url()
        .split_once("://")
        .expect("a cluster address");
    let nodes: Vec<&str> = nodes.split(',').collect();
    let outage = AclOutage::new(
        &nodes
            .iter()
            .map(|node| format!("redis://{node}"))
            .collect::<Vec<_>>(),
    );
    let login = format!("{}:{}@", outage.user, outage.user);
    let url = format!(
        "{scheme}://{}",
        nodes
            .iter()
            .map(|node| format!("{login}{node}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let a = fresh_cluster();
    let a = Redis::open(&url, a.prefix()).expect("a cluster address");
    let b = Redis::open(common::redis_cluster_url(), a.prefix()).expect("a cluster address");
    let limits = LogLimits::frames(max_log_frames);
    (
        redis_stores(&a, "replica-a", limits),
        redis_stores(&b, "replica-b", limits),
        Box::new(outage),
    )
}

/// An outage of one Redis user's pub/sub: taking the user's channel permissions away makes
/// Redis disconnect its subscribed connections and refuse their resubscription, so nothing
/// published meanwhile reaches them; giving them back and disconnecting the user's RESP3
/// connections (the notifier's) makes it resubscribe. Only this user's connections are touched:
/// other tests share the server.
struct AclOutage {
    /// Every server (every node of a Cluster), as the default user.
    admins: Vec<::redis::Client>,
    /// The user, whose password is its name.
    user: String,
}

impl AclOutage {
    fn new(servers: &[String]) -> AclOutage {
        let user = format!("arcp-test-{}", SessionId::generate());
        let admins: Vec<::redis::Client> = servers
            .iter()
            .map(|url| ::redis::Client::open(url.as_str()).expect("a redis address"))
            .collect();
        for admin in &admins {
            let mut conn = admin.get_connection().expect("a redis connection");
            let () = ::redis::cmd("ACL")
                .arg(&[
                    "SETUSER",
                    &user,
                    "on",
                    &format!(">{user}"),
                    "~*",
                    "&*",
                    "+@all",
                ])
                .query(&mut conn)
                .expect("ACL SETUSER");
        }
        AclOutage { admins, user }
    }

    async fn acl(&self, args: &[&str]) {
        for admin in &self.admins {
            let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
            let () = ::redis::cmd("ACL")
                .arg(args)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

#[async_trait]
impl Outage for AclOutage {
    async fn begin(&self) {
        self.acl(&["SETUSER", &self.user, "resetchannels"]).await;
    }

    async fn end(&self) {
        self.acl(&["SETUSER", &self.user, "allchannels"]).await;
        let user = format!("user={}", self.user);
        for admin in &self.admins {
            let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
            let clients: String = ::redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut conn)
                .await
                .unwrap();
            for client in clients.lines() {
                let fields: Vec<&str> = client.split(' ').collect();
                if !fields.contains(&user.as_str()) || !fields.contains(&"resp=3") {
                    continue;
                }
                let Some(id) = fields.iter().find_map(|f| f.strip_prefix("id=")) else {
                    continue;
                };
                let _: ::redis::Value = ::redis::cmd("CLIENT")
                    .arg(&["KILL", "ID", id])
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
}

fn limited_memory(limits: LogLimits) -> Stores {
    MemoryStores::with_limits(limits).stores()
}

fn yielding_limited_memory(limits: LogLimits) -> Stores {
    contract::wrapped::yielding(limited_memory(limits))
}

fn limited_redis(limits: LogLimits) -> Stores {
    redis_stores(&fresh_redis(), "replica-a", limits)
}

fn yielding_limited_redis(limits: LogLimits) -> Stores {
    contract::wrapped::yielding(limited_redis(limits))
}

fn limited_redis_cluster(limits: LogLimits) -> Stores {
    redis_stores(&fresh_cluster(), "replica-a", limits)
}

fn yielding_limited_redis_cluster(limits: LogLimits) -> Stores {
    contract::wrapped::yielding(limited_redis_cluster(limits))
}

/// One test per contract function for `$store`, on a two-worker runtime so that racing tasks
/// really run in parallel.
macro_rules! store_tests {
    ($store:ident; $($module:ident :: $test:ident),* $(,)?) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    crate::contract::$module::$test(crate::$store).await
                }
            )*
        }
    };
}

/// The whole suite for each store: the memory stores, and every store in Redis, on a single
/// server and on a Cluster, whose every call must keep to a slot.
macro_rules! suite {
    ($($test:tt)*) => {
        store_tests!(memory; $($test)*);
        store_tests!(yielding_memory; $($test)*);
        store_tests!(redis; $($test)*);
        store_tests!(redis_cluster; $($test)*);
    };
}

suite!(
    log::numbers_frames_without_gaps_and_reads_from_any_position,
    log::evicts_beyond_its_bound_and_never_skips,
    log::releases_early_only_for_the_newest_fenced_attachment,
    log::a_waiting_read_sees_the_next_append_or_the_removal,
    log::concurrent_appends_get_distinct_gap_free_numbers,
    log::calls_cancelled_anywhere_leave_no_gap,
    log::a_log_created_again_replaces_the_old_one,
    log::a_replica_fence_appends_its_frames_once,
    replicas::a_live_replica_is_never_claimed,
    log::queued_appends_are_logged_once_each_in_queue_order,
    resume::rotation_invalidates_the_previous_token_at_once,
    resume::tokens_are_bound_to_their_principal,
    resume::epochs_fence_rotation_and_the_window,
    resume::a_rotation_clears_the_window,
    resume::concurrent_rotations_with_one_token_have_one_winner,
    resume::each_expired_session_is_taken_once,
    resume::a_cancelled_rotation_rotated_or_did_not,
    resume::a_session_is_taken_at_its_own_deadline_only,
    session::a_new_session_is_attached_with_nothing_delivered,
    session::a_newer_attachment_fences_out_the_older,
    session::acks_are_bounded_by_deliveries_and_never_move_back,
    session::a_flow_waiter_wakes_on_the_change_it_waits_for,
    session::the_attachment_lock_admits_one_holder,
    session::racing_attachments_end_at_the_newest,
    session::attaches_and_deliveries_cancelled_anywhere_took_effect_or_none,
    session::creates_over_the_principal_cap_are_refused_until_one_is_removed,
    session::racing_creates_take_each_slot_once,
    session::creates_cancelled_anywhere_hold_a_slot_only_if_recorded,
    session::lock_attempts_cancelled_anywhere_leave_the_lock_free,
    jobs::lists_jobs_in_id_order_within_scope_and_filter,
    jobs::requests_by_id_reach_the_running_job,
    jobs::purging_forgets_only_jobs_that_ended_before_the_cutoff,
    jobs::inserts_and_finishes_cancelled_anywhere_took_effect_or_none,
    jobs::inserts_over_the_caps_are_refused_until_a_slot_frees,
    jobs::racing_inserts_take_each_slot_once,
    jobs::subscriptions_over_the_cap_are_refused_until_one_ends,
    jobs::racing_subscriptions_take_the_last_slot_once,
    jobs::caps_hold_when_calls_are_cancelled_anywhere,
    idempotency::a_key_names_its_first_job_and_acceptance,
    idempotency::waiters_learn_of_the_acceptance_or_the_release,
    idempotency::concurrent_claims_of_a_new_key_have_one_winner,
    idempotency::a_key_lives_for_its_window,
    idempotency::a_cancelled_claim_claimed_or_did_not,
    idempotency::a_principal_holds_a_bounded_number_of_keys,
    credentials::an_entry_is_outstanding_until_its_revocation_is_accepted,
    credentials::changes_cancelled_anywhere_took_effect_or_none,
    credentials::adopting_ones_own_part_changes_nothing,
);

/// The tests of what one replica sees of another's changes, for each store by its replicas
/// factory.
macro_rules! replicas_suite {
    ($($test:tt)*) => {
        store_tests!(memory_replicas; $($test)*);
        store_tests!(redis_replicas; $($test)*);
        store_tests!(redis_cluster_replicas; $($test)*);
    };
}

replicas_suite!(
    resume::a_rotation_on_one_replica_is_seen_on_the_other_at_once,
    jobs::a_job_on_one_replica_is_listed_and_found_on_the_other,
    jobs::a_cancel_on_one_replica_reaches_the_job_on_the_other,
    jobs::a_job_that_released_its_slot_refuses_cancels_on_every_replica,
    jobs::subscriptions_on_one_replica_reach_the_job_on_the_other,
    jobs::caps_hold_across_replicas,
    session::a_change_on_one_replica_wakes_a_waiter_on_the_other,
    session::racing_attaches_on_two_replicas_end_at_the_newest,
    session::the_attachment_lock_admits_one_holder_across_replicas,
    session::the_session_cap_holds_across_replicas,
    log::a_reader_on_one_replica_gets_every_append_of_both_live_in_order,
    log::a_log_removed_on_one_replica_fails_the_others_waiting_reader,
    log::appends_racing_on_two_replicas_get_distinct_gap_free_numbers,
    log::queued_appends_racing_on_two_replicas_get_distinct_gap_free_numbers,
    credentials::each_replica_lists_its_own_part,
);

/// [`redis_replicas`], for the tests of what a store shared between processes does when one
/// of them is lost. Two replicas of the memory stores are one process, which never outlives
/// itself: it has nothing of the kind to test.
fn redis_processes(max_log_frames: usize) -> (Stores, Stores) {
    redis_replicas(max_log_frames)
}

/// [`redis_cluster_replicas`], for the tests of replica loss.
fn redis_cluster_processes(max_log_frames: usize) -> (Stores, Stores) {
    redis_cluster_replicas(max_log_frames)
}

/// The tests of replica loss, for each store whose replicas are processes of their own.
macro_rules! shared_replicas_suite {
    ($($test:tt)*) => {
        store_tests!(redis_processes; $($test)*);
        store_tests!(redis_cluster_processes; $($test)*);
    };
}

shared_replicas_suite!(
    replicas::a_silent_replica_is_claimed_once_and_learns_it_was_lost,
    log::a_fenced_replica_appends_nothing_more,
    jobs::a_lost_replicas_jobs_are_found_and_ended_once,
    jobs::a_lost_replicas_dropped_changes_are_repaired_by_its_takeover,
    session::the_sessions_a_replica_attached_are_found_by_replica,
    credentials::a_lost_replicas_entries_move_to_the_adopter_and_are_never_lost,
    credentials::a_lost_instance_records_nothing,
);

store_tests!(memory_replicas_with_outage; jobs::a_cancel_whose_message_was_lost_still_reaches_the_job);
store_tests!(redis_replicas_with_outage; jobs::a_cancel_whose_message_was_lost_still_reaches_the_job);
store_tests!(redis_cluster_replicas_with_outage; jobs::a_cancel_whose_message_was_lost_still_reaches_the_job);

/// The tests of the logs' byte bounds and budget, for each store by its limited factory.
macro_rules! limited_suite {
    ($($test:tt)*) => {
        store_tests!(limited_memory; $($test)*);
        store_tests!(yielding_limited_memory; $($test)*);
        store_tests!(limited_redis; $($test)*);
        store_tests!(yielding_limited_redis; $($test)*);
        store_tests!(limited_redis_cluster; $($test)*);
        store_tests!(yielding_limited_redis_cluster; $($test)*);
    };
}

limited_suite!(
    log::evicts_beyond_its_byte_bound_and_never_skips,
    log::append_measures_how_far_a_reader_may_fall_behind,
    log::the_budget_evicts_detached_sessions_first_and_never_attached_ones,
    log::a_newer_fence_reattaches_and_an_older_detach_changes_nothing,
    log::a_removed_log_gives_back_its_bytes,
    log::released_frames_give_back_their_bytes,
    log::frames_queued_together_are_measured_one_by_one,
);

/// A process restarted under the id of one that died waits while the dead one's lease runs
/// (`Held`), then must see it taken over (`Predecessor`: it may claim it itself, being another
/// instance), and only then registers; the dead one, were it only paused, learns it was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_replica_registers_once_its_predecessor_was_taken_over() {
    let redis = fresh_redis();
    let limits = LogLimits::frames(10);
    let first = redis_stores(&redis, "replica-a", limits);
    let second = redis_stores(&redis, "replica-a", limits);
    let (short, long) = (Duration::from_millis(300), Duration::from_secs(60));
    assert_eq!(
        first.replicas.register(short).await.unwrap(),
        Registration::Registered
    );
    match second.replicas.register(long).await.unwrap() {
        Registration::Held { remaining } => assert!(remaining <= short, "{remaining:?}"),
        other => panic!("a live predecessor holds the id, not {other:?}"),
    }
    common::eventually("the predecessor's lease to run out", || async {
        second.replicas.register(long).await.unwrap() == Registration::Predecessor
    })
    .await;
    let claimed = second.replicas.claim_lost(long).await.unwrap();
    assert_eq!(claimed, vec![first.replicas.instance().clone()]);
    assert_eq!(
        second.replicas.register(long).await.unwrap(),
        Registration::Predecessor,
        "not before the takeover is done"
    );
    second.replicas.taken_over(&claimed[0]).await.unwrap();
    assert_eq!(
        second.replicas.register(long).await.unwrap(),
        Registration::Registered
    );
    assert_eq!(
        second.replicas.heartbeat(long).await.unwrap(),
        Heartbeat::Alive
    );
    assert!(matches!(
        first.replicas.heartbeat(long).await.unwrap(),
        Heartbeat::Lost { .. }
    ));
    assert!(second.replicas.claim_lost(long).await.unwrap().is_empty());
}
