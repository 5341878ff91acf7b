//! The gateway: everything a transport needs to serve ARCP sessions, in one shareable value.

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
    credentials::CredentialProvisioner,
    engine::{JobManager, ObservePolicy, SamePrincipalOnly},
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
    store::Stores,
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
        let services = Arc::new(JobServices {
            delivery: DeliveryPolicy::new(
                config.back_pressure_lag,
                config.flow_window.min(config.max_log_frames as u64 / 2),
            ),
            logs: stores.logs.clone(),
            provisioner: self.provisioner,
            settings: config.clone(),
            running: Running::new(self.replica.unwrap_or_else(ReplicaId::generate)),
        });
        let offer = Offer {
            features,
            agents: self.agents.inventory(),
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

    /// Removes sessions whose resume window has closed, with their logs, after cancelling
    /// their running jobs and dropping their subscriptions (nobody can receive those frames
    /// any more); forgets jobs that ended longer than a window ago.
    pub async fn sweep(&self) {
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
            tracing::info!(session = %id, "resume window closed; session removed");
        }
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
