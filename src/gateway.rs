//! The gateway: everything a transport needs to serve ARCP sessions, in one shareable value.

use std::{sync::Arc, time::SystemTime};

use futures::Stream;
use tokio_util::sync::CancellationToken;

use crate::{
    agent::AgentRegistry,
    auth::Authenticator,
    config::GatewayConfig,
    credentials::CredentialProvisioner,
    event_log::{memory::MemoryEventLog, EventLog},
    ids::Principal,
    job::{JobManager, ObservePolicy, SamePrincipalOnly},
    protocol::{
        client::ResumeRequest,
        server::{OutboundItem, StreamEnd, Welcome},
        Features,
    },
    resume::{memory::MemoryResumeRegistry, ResumeRegistry, ResumeToken},
    session::{
        connection::{self, InboundStream},
        outbox::Outbox,
        SessionTable,
    },
};

/// The runtime's name in `session.welcome`.
pub const RUNTIME_NAME: &str = "arcp-gateway";
/// The runtime's version in `session.welcome`.
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the transport established before the first frame: credentials from its metadata.
#[derive(Clone, Debug, Default)]
pub struct ConnectInfo {
    /// The principal authenticated from transport metadata (`authorization: Bearer ...`).
    pub principal: Option<Principal>,
    /// Resume coordinates from transport metadata, used when the hello carries none.
    pub resume: Option<ResumeRequest>,
}

/// An ARCP runtime: sessions, jobs, the event log and the resume registry.
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) auth: Authenticator,
    pub(crate) registry: Arc<dyn ResumeRegistry>,
    pub(crate) log: Arc<dyn EventLog>,
    pub(crate) sessions: SessionTable,
    pub(crate) jobs: Arc<JobManager>,
    pub(crate) agents: Arc<AgentRegistry>,
    pub(crate) shutdown: CancellationToken,
    /// What the runtime offers in every welcome (§6.2).
    pub(crate) features: Features,
}

/// Assembles a [`Gateway`].
pub struct GatewayBuilder {
    config: GatewayConfig,
    auth: Authenticator,
    agents: AgentRegistry,
    registry: Option<Arc<dyn ResumeRegistry>>,
    log: Option<Arc<dyn EventLog>>,
    observe: Arc<dyn ObservePolicy>,
    provisioner: Option<Arc<dyn CredentialProvisioner>>,
}

impl GatewayBuilder {
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

    /// A resume registry other than the embedded in-memory one.
    pub fn resume_registry(mut self, registry: Arc<dyn ResumeRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// An event log other than the embedded in-memory one.
    pub fn event_log(mut self, log: Arc<dyn EventLog>) -> Self {
        self.log = Some(log);
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

    /// The gateway.
    pub fn build(self) -> Arc<Gateway> {
        let log = self
            .log
            .unwrap_or_else(|| Arc::new(MemoryEventLog::new(self.config.max_log_frames)));
        let agents = Arc::new(self.agents);
        Arc::new(Gateway {
            registry: self
                .registry
                .unwrap_or_else(|| Arc::new(MemoryResumeRegistry::new())),
            jobs: Arc::new(JobManager::new(
                agents.clone(),
                Outbox::new(
                    self.config.back_pressure_lag,
                    self.config
                        .flow_window
                        .min(self.config.max_log_frames as u64 / 2),
                ),
                self.config.clone(),
                self.observe,
                self.provisioner.clone(),
            )),
            features: if self.provisioner.is_some() {
                Features::supported()
            } else {
                Features::supported().without("provisioned_credentials")
            },
            log,
            agents,
            auth: self.auth,
            sessions: SessionTable::default(),
            shutdown: CancellationToken::new(),
            config: self.config,
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
            registry: None,
            log: None,
            observe: Arc::new(SamePrincipalOnly),
            provisioner: None,
        }
    }

    /// Serves one stream: `inbound` is what the client sends, the result what it receives.
    pub fn connect(
        self: &Arc<Self>,
        conn: ConnectInfo,
        inbound: InboundStream,
    ) -> impl Stream<Item = OutboundItem> + Send + 'static {
        connection::serve(self.clone(), conn, inbound)
    }

    /// The settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The bearer authenticator, for transport layers that authenticate before a stream opens.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// The resume registry, for transport layers that validate resume metadata.
    pub fn resume_registry(&self) -> &Arc<dyn ResumeRegistry> {
        &self.registry
    }

    /// The event log.
    pub fn event_log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// The sessions this process holds.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Ends every stream with a "shutting down" status so clients resume elsewhere. Sessions
    /// and jobs are left as they are.
    pub fn shutdown(&self) {
        // Streams attaching after this see the cancelled token (`handshake`); the ones already
        // attached are rung here.
        self.shutdown.cancel();
        for session in self.sessions.all() {
            session.stop_stream(StreamEnd::ShuttingDown);
        }
    }

    /// Removes sessions whose resume window has closed, with their logs, and forgets jobs that
    /// ended longer than a window ago.
    pub async fn sweep(&self) {
        let now = SystemTime::now();
        for id in self.registry.take_expired(now).await {
            self.sessions.remove(&id);
            self.log.remove(&id).await;
            tracing::info!(session = %id, "resume window closed; session removed");
        }
        if let Some(before) = now.checked_sub(self.config.resume_window) {
            self.jobs.purge_finished(before);
        }
    }

    /// Runs [`Gateway::sweep`] every `sweep_interval` until shutdown.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let gw = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(gw.config.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = gw.shutdown.cancelled() => return,
                    _ = tick.tick() => gw.sweep().await,
                }
            }
        })
    }

    pub(crate) fn welcome(&self, token: &ResumeToken, features: &Features) -> Welcome {
        Welcome {
            runtime_name: RUNTIME_NAME,
            runtime_version: RUNTIME_VERSION,
            resume_token: token.expose().to_owned(),
            resume_window_sec: u32::try_from(self.config.resume_window.as_secs())
                .unwrap_or(u32::MAX),
            heartbeat_interval_sec: self.config.heartbeat_interval_sec,
            features: features.names(),
            agents: self.agents.inventory(),
        }
    }
}
