//! The gateway: everything a transport needs to serve ARCP sessions, in one shareable value.
//!
//! On stores shared with other replicas it also keeps this replica's lease
//! ([`Gateway::register`], [`Gateway::keep_lease`], [`Gateway::leave`]) and, in every sweep,
//! takes over the replicas whose leases ran out (`crate::takeover`). With a credential
//! upstream, every sweep also retries the revocations the ledger still lists
//! ([`Provisioning::sweep`]).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::Stream;
use tokio_util::sync::CancellationToken;

use crate::{
    agent::AgentRegistry,
    auth::{
        throttle::{AuthThrottle, FailureLimits},
        Authenticator,
    },
    config::GatewayConfig,
    credentials::{CredentialProvisioner, Provisioning},
    engine::{JobManager, ObservePolicy, SamePrincipalOnly},
    error::ArcpError,
    ids::ReplicaId,
    job::{
        delivery::DeliveryPolicy,
        running::{Drained, Running},
        JobServices,
    },
    protocol::Features,
    session::{
        connection,
        output::{OutboundItem, StreamEnd},
        Attachments, InboundStream, Offer, SessionServices, SessionSettings,
    },
    store::{
        replicas::{Heartbeat, Registration},
        Stores,
    },
    takeover,
};

pub use crate::session::{
    handshake::{RUNTIME_NAME, RUNTIME_VERSION},
    ConnectInfo,
};

/// An ARCP runtime: sessions, jobs, and the stores they live in.
pub struct Gateway {
    config: GatewayConfig,
    stores: Stores,
    sessions: Arc<SessionServices>,
    /// The credential upstream and its ledger, when configured.
    provisioning: Option<Arc<Provisioning>>,
}

/// Assembles a [`Gateway`].
pub struct GatewayBuilder {
    config: GatewayConfig,
    auth: Authenticator,
    agents: AgentRegistry,
    stores: Option<Stores>,
    observe: Arc<dyn ObservePolicy>,
    provisioner: Option<Arc<dyn CredentialProvisioner>>,
    replica: Option<ReplicaId>,
}

impl GatewayBuilder {
    /// The settings the gateway will have.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Bearer authentication; the default accepts every token ([`Authenticator::Open`]).
    pub fn auth(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }

    /// The agents to offer; the default is [`AgentRegistry::with_builtins`].
    pub fn agents(mut self, agents: AgentRegistry) -> Self {
        self.agents = agents;
        self
    }

    /// Stores other than the embedded in-memory ones, e.g. stores several replicas share.
    pub fn stores(mut self, stores: Stores) -> Self {
        self.stores = Some(stores);
        self
    }

    /// Who may observe other principals' jobs; the default is nobody ([`SamePrincipalOnly`]).
    pub fn observe_policy(mut self, policy: Arc<dyn ObservePolicy>) -> Self {
        self.observe = policy;
        self
    }

    /// Issue provisioned credentials (§9.8) through `provisioner`; only then is
    /// `provisioned_credentials` advertised.
    pub fn credential_provisioner(mut self, provisioner: Arc<dyn CredentialProvisioner>) -> Self {
        self.provisioner = Some(provisioner);
        self
    }

    /// This replica's name among those sharing the stores; by default
    /// [`ReplicaId::generate`].
    pub fn replica(mut self, replica: ReplicaId) -> Self {
        self.replica = Some(replica);
        self
    }

    /// The gateway.
    pub fn build(self) -> Arc<Gateway> {
        let config = self.config;
        let stores = self
            .stores
            .unwrap_or_else(|| Stores::memory_with_limits(config.log_limits()));
        let features = if self.provisioner.is_some() {
            Features::supported()
        } else {
            Features::supported().without("provisioned_credentials")
        };
        let provisioning = self.provisioner.map(|upstream| {
            let instance = stores.replicas.instance().clone();
            Arc::new(Provisioning::new(
                upstream,
                stores.credentials.clone(),
                instance,
            ))
        });
        let services = Arc::new(JobServices {
            delivery: DeliveryPolicy::new(
                config.back_pressure_lag,
                config.flow_window.min(config.max_log_frames as u64 / 2),
            ),
            logs: stores.logs.clone(),
            provisioner: provisioning.clone(),
            settings: config.clone(),
            running: Running::new(self.replica.unwrap_or_else(ReplicaId::generate)),
        });
        let offer = Offer {
            features,
            agents: self.agents.inventory(),
            plaintext_credentials: config.allow_plaintext_credentials,
        };
        let jobs = JobManager::new(
            Arc::new(self.agents),
            services,
            stores.jobs.clone(),
            stores.idempotency.clone(),
            self.observe,
        );
        let sessions = Arc::new(SessionServices {
            sessions: stores.sessions.clone(),
            resume: stores.resume.clone(),
            logs: stores.logs.clone(),
            jobs,
            auth: self.auth,
            throttle: AuthThrottle::new(FailureLimits {
                limit: config.auth_failure_limit,
                window: config.auth_failure_window,
                delay: config.auth_failure_delay,
                tracked: config.auth_failure_tracked,
            }),
            offer,
            settings: SessionSettings {
                resume_window: config.resume_window,
                hello_timeout: config.hello_timeout,
                heartbeat_interval_sec: config.heartbeat_interval_sec,
                max_sessions_per_principal: config.max_sessions_per_principal,
                store_retry: config.store_retry,
            },
            attachments: Attachments::default(),
            shutdown: CancellationToken::new(),
        });
        Arc::new(Gateway {
            config,
            stores,
            sessions,
            provisioning,
        })
    }
}

impl Gateway {
    /// Starts assembling a gateway with `config`, open authentication, the built-in agents and
    /// in-memory stores.
    pub fn builder(config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            config,
            auth: Authenticator::Open,
            agents: AgentRegistry::with_builtins(),
            stores: None,
            observe: Arc::new(SamePrincipalOnly),
            provisioner: None,
            replica: None,
        }
    }

    /// Serves one stream: `inbound` is what the client sends, the result what it receives.
    pub fn connect(
        &self,
        conn: ConnectInfo,
        inbound: InboundStream,
    ) -> impl Stream<Item = OutboundItem> + Send + 'static {
        connection::serve(self.sessions.clone(), conn, inbound)
    }

    /// The settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The bearer authenticator, for transport layers that authenticate before a stream opens.
    pub fn authenticator(&self) -> &Authenticator {
        &self.sessions.auth
    }

    /// Slows the answers to repeated failed authentication and resume attempts; for transport
    /// layers that check credentials before a stream opens.
    pub fn auth_throttle(&self) -> &AuthThrottle {
        &self.sessions.throttle
    }

    /// The stores, for transport layers that validate resume metadata.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The streams attached to sessions on this process.
    pub fn attachments(&self) -> &Attachments {
        &self.sessions.attachments
    }

    /// Ends every stream with a "shutting down" status so clients resume elsewhere. Sessions
    /// and jobs are left as they are.
    pub fn shutdown(&self) {
        // Streams attaching after this see the cancelled token (`handshake`); the ones already
        // attached are stopped here.
        self.sessions.shutdown.cancel();
        self.sessions.attachments.stop_all(StreamEnd::ShuttingDown);
    }

    /// After [`Gateway::shutdown`], lets the jobs running on this replica finish for up to
    /// `grace`, then ends the rest with a retryable `INTERNAL_ERROR` naming the replica (see
    /// [`crate::job::running`]), and returns once their terminal frames are logged or `settle`
    /// more has passed.
    pub async fn drain_jobs(&self, grace: Duration, settle: Duration) -> Drained {
        self.sessions.jobs.running().drain(grace, settle).await
    }

    /// Takes this replica's id among those sharing the stores, with a lease that
    /// [`Gateway::keep_lease`] must then renew; before it serves, so that nothing it starts
    /// is mistaken for a predecessor's. If a previous process of the same id still holds it,
    /// waits for its lease to run out (taking it over then, if nobody else has); fails if it
    /// is still held after a few leases: another live process has the same id. While the
    /// stores cannot be reached, tries again every heartbeat.
    pub async fn register(&self) -> Result<(), ArcpError> {
        let replicas = &self.stores.replicas;
        let (lease, heartbeat) = (self.config.replica_lease, self.config.replica_heartbeat);
        let mut deadline = None;
        loop {
            let registered = replicas.register(lease).await;
            let deadline = *deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + 3 * lease + heartbeat);
            let wait = match registered {
                Ok(Registration::Registered) => {
                    self.check_ledger().await;
                    return Ok(());
                }
                Ok(Registration::Lost) => {
                    return Err(ArcpError::Internal(format!(
                        "replica instance {} was declared lost; it cannot register again",
                        replicas.instance()
                    )))
                }
                Err(e) => {
                    tracing::warn!("could not register the replica, trying again: {e}");
                    tokio::time::sleep(heartbeat).await;
                    continue;
                }
                Ok(Registration::Held { remaining }) => {
                    tracing::warn!(
                        replica = %replicas.instance().replica(),
                        remaining_ms = remaining.as_millis() as u64,
                        "another process holds this replica id; waiting for its lease to run out"
                    );
                    remaining.min(heartbeat)
                }
                Ok(Registration::Predecessor) => {
                    // Ours to take over unless another replica is at it already.
                    self.claim_and_take_over().await;
                    heartbeat.min(Duration::from_millis(200))
                }
            };
            if tokio::time::Instant::now() + wait > deadline {
                return Err(ArcpError::Internal(format!(
                    "replica id {} is held by another live process; give this one another \
                     --replica-id",
                    replicas.instance().replica()
                )));
            }
            tokio::time::sleep(wait + Duration::from_millis(10)).await;
        }
    }

    /// Says so, for operators, when this replica's part of the credential ledger lists
    /// credentials (a predecessor's) and no upstream is configured to revoke them.
    async fn check_ledger(&self) {
        if self.provisioning.is_some() {
            return;
        }
        match self.stores.credentials.outstanding().await {
            Ok(outstanding) if !outstanding.is_empty() => tracing::error!(
                credentials = outstanding.len(),
                "the credential ledger lists credentials this replica id issued that are not \
                 revoked, and no credential upstream is configured to revoke them; start it \
                 with the upstream that issued them"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("could not read the credential ledger: {e}"),
        }
    }

    /// Renews this replica's lease every `replica_heartbeat`, for as long as it holds it;
    /// returns who took it over once it learns it was declared lost (it was silent for longer
    /// than its lease: paused, or cut off from the stores). A replica that was lost must stop:
    /// others are ending its jobs and detaching its sessions, and the stores refuse what it
    /// writes to them.
    pub async fn keep_lease(&self) -> String {
        let replicas = &self.stores.replicas;
        let mut tick = tokio::time::interval(self.config.replica_heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match replicas.heartbeat(self.config.replica_lease).await {
                Ok(Heartbeat::Alive) => {}
                Ok(Heartbeat::Lost { by }) => return by,
                Err(e) => tracing::warn!("the replica's lease was not renewed: {e}"),
            }
        }
    }

    /// Gives up this replica's lease after a clean shutdown (its jobs drained), so that
    /// nobody takes it over; unless credentials it issued are still to be revoked: then its
    /// lease runs out, and the replica that takes it over revokes them.
    pub async fn leave(&self) {
        let outstanding = match &self.provisioning {
            Some(provisioning) => provisioning.outstanding().await,
            None => self.stores.credentials.outstanding().await.map(|o| o.len()),
        };
        match outstanding {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(credentials = n, "credentials this replica issued are not revoked yet; keeping the lease to run out, so that a replica sharing the store takes them over (on a memory store they stay live upstream)");
                return;
            }
            Err(e) => {
                tracing::warn!("could not read the credential ledger; keeping the lease to run out, for another replica to take over what it lists: {e}");
                return;
            }
        }
        if let Err(e) = self.stores.replicas.leave().await {
            tracing::warn!("the replica's lease was not given up: {e}");
        }
    }

    /// Claims the replicas whose leases ran out, and takes each over (`crate::takeover`),
    /// unless this replica was itself declared lost.
    async fn take_over_lost(&self) {
        // A replica back from a pause must not take anyone over: it learns here that it was
        // lost before it claims anything.
        match self
            .stores
            .replicas
            .heartbeat(self.config.replica_lease)
            .await
        {
            Ok(Heartbeat::Alive) => {}
            Ok(Heartbeat::Lost { .. }) => return,
            Err(e) => {
                tracing::warn!("could not renew the lease before looking for lost replicas: {e}");
                return;
            }
        }
        self.claim_and_take_over().await;
    }

    /// Claims the replicas whose leases ran out, and takes each over.
    async fn claim_and_take_over(&self) {
        let replicas = &self.stores.replicas;
        let (lease, window) = (self.config.replica_lease, self.config.resume_window);
        let claimed = match replicas.claim_lost(lease).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!("could not look for lost replicas: {e}");
                return;
            }
        };
        for lost in claimed {
            tracing::warn!(lost = %lost, "replica lost: its lease ran out; taking it over");
            match takeover::take_over(&self.stores, &lost, window, lease).await {
                Ok(done) => tracing::warn!(
                    lost = %lost,
                    jobs = done.jobs,
                    sessions = done.sessions,
                    credentials = done.credentials,
                    "took over the lost replica"
                ),
                // The claim runs out and the takeover is done again, here or elsewhere.
                Err(e) => tracing::warn!(lost = %lost, "could not take over the lost replica: {e}"),
            }
        }
    }

    /// Takes over the replicas whose leases ran out (see [`Gateway::keep_lease`]); then removes
    /// sessions whose resume window has closed, with their logs, after cancelling their
    /// running jobs and dropping their subscriptions (nobody can receive those frames any
    /// more); forgets jobs that ended longer than a window ago; and, beside that, retries the
    /// credential revocations that are due, a lost replica's just taken over included.
    pub async fn sweep(&self) {
        self.take_over_lost().await;
        // Beside, not after: an upstream that is slow to refuse must not hold up sessions.
        tokio::join!(self.sweep_sessions(), self.sweep_credentials());
    }

    async fn sweep_credentials(&self) {
        if let Some(provisioning) = &self.provisioning {
            provisioning.sweep().await;
        }
    }

    async fn sweep_sessions(&self) {
        let now = SystemTime::now();
        let expired = match self.stores.resume.take_expired(now).await {
            Ok(expired) => expired,
            Err(e) => {
                tracing::warn!("could not sweep expired sessions: {e}");
                Vec::new()
            }
        };
        for id in expired {
            if let Err(e) = self.sessions.jobs.session_expired(&id).await {
                tracing::warn!(session = %id, "expired session's jobs not ended: {e}");
            }
            if let Err(e) = self.stores.sessions.remove(&id).await {
                tracing::warn!(session = %id, "session record not removed: {e}");
            }
            self.stores.logs.remove(&id).await;
            self.sessions.attachments.forget_detached(&id);
            tracing::info!(session = %id, "resume window closed; session removed");
        }
        self.sessions.attachments.forget_closed_windows(now);
        if let Some(before) = now.checked_sub(self.config.resume_window) {
            if let Err(e) = self.sessions.jobs.purge_finished(before).await {
                tracing::warn!("could not purge finished jobs: {e}");
            }
        }
    }

    /// Runs [`Gateway::sweep`] every `sweep_interval` until shutdown, except while the
    /// stores do not answer: a sweep could not succeed then, and would only log its failure
    /// every interval.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let gw = self.clone();
        tokio::spawn(async move {
            let health = gw.stores.health.as_ref().map(|h| h.watch());
            let mut tick = tokio::time::interval(gw.config.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = gw.sessions.shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if health.as_ref().is_none_or(|h| h.borrow().is_reachable()) {
                            gw.sweep().await;
                        }
                    }
                }
            }
        })
    }
}
