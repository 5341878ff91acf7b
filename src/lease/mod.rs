//! Leases (§9): what a job may do, checked before every authority-bearing operation.
//!
//! An [`EffectiveLease`] is the validated form of a job's `lease_request` plus its
//! `lease_constraints.expires_at`. It answers two questions, both pure functions of their
//! inputs so the job runtime decides when to ask them and what clock to use:
//!
//! - [`EffectiveLease::authorize`]: may this job touch this resource now (§9.3, §9.5)?
//! - [`EffectiveLease::check_subset`]: may this job delegate that lease (§9.4, §10)?
//!
//! Budget counters change as costs are reported, so they live in a [`Budget`] the runtime owns
//! per job; the lease only holds the caps it was granted with.
//!
//! - [`glob`]: the pattern dialect and its inclusion check.
//! - [`budget`]: `cost.budget` amounts, counters and cost metrics (§9.6).
//! - [`expiry`]: `expires_at` parsing (§9.5).

pub mod budget;
pub mod expiry;
pub mod glob;

use std::{
    collections::{btree_map::Entry, BTreeMap},
    fmt,
    time::SystemTime,
};

pub use budget::{cost_of_metric, Amount, Budget};
pub use expiry::parse_expires_at;
pub use glob::Pattern;

use crate::{clock::Timestamp, error::ArcpError, protocol::Lease};

/// A reserved lease namespace (§9.2). Ordered so leases serialise deterministically.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Namespace {
    /// `fs.read`: path globs.
    FsRead,
    /// `fs.write`: path globs.
    FsWrite,
    /// `net.fetch`: URL globs.
    NetFetch,
    /// `tool.call`: tool name globs.
    ToolCall,
    /// `agent.delegate`: agent name globs.
    AgentDelegate,
    /// `cost.budget`: amount strings, not globs (§9.6).
    CostBudget,
    /// `model.use`: model name globs (§9.7).
    ModelUse,
}

impl Namespace {
    /// Every namespace, in the order of §9.2.
    pub const ALL: [Namespace; 7] = [
        Namespace::FsRead,
        Namespace::FsWrite,
        Namespace::NetFetch,
        Namespace::ToolCall,
        Namespace::AgentDelegate,
        Namespace::CostBudget,
        Namespace::ModelUse,
    ];

    /// Parses a wire namespace; `None` for anything not reserved by §9.2.
    pub fn parse(s: &str) -> Option<Namespace> {
        Namespace::ALL.into_iter().find(|ns| ns.as_str() == s)
    }

    /// The namespace as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Namespace::FsRead => "fs.read",
            Namespace::FsWrite => "fs.write",
            Namespace::NetFetch => "net.fetch",
            Namespace::ToolCall => "tool.call",
            Namespace::AgentDelegate => "agent.delegate",
            Namespace::CostBudget => "cost.budget",
            Namespace::ModelUse => "model.use",
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `cost.budget` grant: the caps, and the strings they came from so the lease echoes back
/// exactly what the client sent (`USD:5.00`, not `USD:5`).
#[derive(Clone, PartialEq, Eq, Debug)]
struct BudgetGrant {
    source: Vec<String>,
    caps: Budget,
}

/// A job's validated lease: glob grants per namespace, budget caps and expiry.
///
/// Fields are private so the grants, the caps and their wire form cannot drift apart.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EffectiveLease {
    grants: BTreeMap<Namespace, Vec<Pattern>>,
    budget: Option<BudgetGrant>,
    expires_at: Option<SystemTime>,
}

impl EffectiveLease {
    /// Validates a `lease_request`. `expires_at` is the already-parsed constraint (see
    /// [`parse_expires_at`]). When the request does not name `model.use` and the deployment
    /// sets `default_model_use`, those patterns become the grant (§9.7); an explicit
    /// `model.use: []` is kept as "no models".
    ///
    /// For a delegated lease pass `None` as the default: a deployment-wide default could be
    /// wider than the parent, and the child would then fail the subset check for a grant it
    /// never asked for.
    ///
    /// Fails with `INVALID_REQUEST` on an unknown namespace, an empty or oversized pattern, or
    /// a malformed `cost.budget`. An empty pattern list is accepted and grants nothing.
    pub fn from_request(
        lease: &Lease,
        expires_at: Option<SystemTime>,
        default_model_use: Option<&[String]>,
    ) -> Result<EffectiveLease, ArcpError> {
        let mut grants = BTreeMap::new();
        let mut budget = None;
        for (key, patterns) in lease {
            let Some(ns) = Namespace::parse(key) else {
                return Err(ArcpError::InvalidRequest(format!(
                    "unknown lease namespace {key:?}"
                )));
            };
            if ns == Namespace::CostBudget {
                budget = Some(BudgetGrant {
                    source: patterns.clone(),
                    caps: Budget::from_patterns(patterns)?,
                });
            } else {
                grants.insert(ns, parse_patterns(ns, patterns)?);
            }
        }
        if let Some(defaults) = default_model_use {
            if let Entry::Vacant(slot) = grants.entry(Namespace::ModelUse) {
                slot.insert(parse_patterns(Namespace::ModelUse, defaults)?);
            }
        }
        Ok(EffectiveLease {
            grants,
            budget,
            expires_at,
        })
    }

    /// The lease in its wire shape, with every pattern as originally written, including a
    /// `model.use` filled in from the deployment default.
    pub fn to_wire(&self) -> Lease {
        let mut wire: Lease = self
            .grants
            .iter()
            .map(|(ns, patterns)| {
                let strings = patterns.iter().map(|p| p.as_str().to_owned()).collect();
                (ns.as_str().to_owned(), strings)
            })
            .collect();
        if let Some(budget) = &self.budget {
            wire.insert(
                Namespace::CostBudget.as_str().to_owned(),
                budget.source.clone(),
            );
        }
        wire
    }

    /// The patterns granted in `ns`; empty when the namespace is absent or for `cost.budget`,
    /// whose entries are amounts (see [`EffectiveLease::budget`]).
    pub fn patterns(&self, ns: Namespace) -> &[Pattern] {
        self.grants.get(&ns).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The budget caps as granted, before any spending; `None` when the lease has no
    /// `cost.budget`. Clone it to start a job's live counters.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref().map(|b| &b.caps)
    }

    /// When the lease stops authorising anything, if ever.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Gives a delegated lease without an expiry its parent's (§9.4: the child inherits it
    /// implicitly). An explicit child expiry is left alone so a later one still fails
    /// [`EffectiveLease::check_subset`] rather than being silently clamped.
    pub fn inherit_expiry(&mut self, parent: &EffectiveLease) {
        if self.expires_at.is_none() {
            self.expires_at = parent.expires_at;
        }
    }

    /// Whether the lease permits `resource` in `ns` at `now` (§9.3, §9.5).
    ///
    /// `LEASE_EXPIRED` at or after `expires_at`; `PERMISSION_DENIED` when no pattern of `ns`
    /// matches. Budget exhaustion is not checked here because the counters are live job state:
    /// callers also check [`Budget::ensure_available`] on them (§9.6). Asking about
    /// `cost.budget` is `INVALID_REQUEST`: it holds ceilings, not resources.
    pub fn authorize(
        &self,
        ns: Namespace,
        resource: &str,
        now: SystemTime,
    ) -> Result<(), ArcpError> {
        if ns == Namespace::CostBudget {
            return Err(ArcpError::InvalidRequest(
                "cost.budget is a ceiling, not a resource namespace to authorise against"
                    .to_owned(),
            ));
        }
        if let Some(at) = self.expires_at {
            if now >= at {
                return Err(ArcpError::LeaseExpired(format!(
                    "lease expired at {}",
                    Timestamp(at).to_rfc3339()
                )));
            }
        }
        if self.patterns(ns).iter().any(|p| p.matches(resource)) {
            Ok(())
        } else {
            Err(ArcpError::PermissionDenied(format!(
                "lease does not grant {ns} for {resource:?}"
            )))
        }
    }

    /// Whether `child` may be delegated from this lease (§9.4, §10); `LEASE_SUBSET_VIOLATION`
    /// naming the first excess otherwise.
    ///
    /// - Every child pattern must be covered by a pattern of the same namespace here.
    /// - Budgets compare against `parent_remaining` (the live counters) when given, else this
    ///   lease's caps. Every child currency must be budgeted here and be at most what remains.
    ///   Every currency budgeted here must also be budgeted in the child: a child silent on a
    ///   currency could spend it without bound, exceeding the parent's remaining.
    /// - If this lease expires, the child must expire no later. A child without an expiry is a
    ///   violation; apply [`EffectiveLease::inherit_expiry`] first to take §9.4's implicit
    ///   inheritance.
    pub fn check_subset(
        &self,
        child: &EffectiveLease,
        parent_remaining: Option<&Budget>,
    ) -> Result<(), ArcpError> {
        for (ns, patterns) in &child.grants {
            let parent = self.patterns(*ns);
            if let Some(excess) = patterns
                .iter()
                .find(|c| !parent.iter().any(|p| p.covers(c)))
            {
                return Err(ArcpError::LeaseSubsetViolation(format!(
                    "{ns} pattern {:?} is not covered by the parent lease",
                    excess.as_str()
                )));
            }
        }
        self.check_budget_subset(child, parent_remaining.or(self.budget()))?;
        self.check_expiry_subset(child)
    }

    fn check_budget_subset(
        &self,
        child: &EffectiveLease,
        parent: Option<&Budget>,
    ) -> Result<(), ArcpError> {
        let empty = Budget::default();
        let child_caps = child.budget().unwrap_or(&empty);
        let parent_caps = parent.unwrap_or(&empty);
        for (currency, asked) in child_caps.counters() {
            let Some(left) = parent_caps.get(currency) else {
                return Err(ArcpError::LeaseSubsetViolation(format!(
                    "cost.budget {currency}:{asked} names a currency the parent lease does not \
                     budget"
                )));
            };
            if *asked > left {
                return Err(ArcpError::LeaseSubsetViolation(format!(
                    "cost.budget {currency}:{asked} exceeds the parent's remaining \
                     {currency}:{left}"
                )));
            }
        }
        if let Some((currency, left)) = parent_caps
            .counters()
            .iter()
            .find(|(c, _)| child_caps.get(c).is_none())
        {
            return Err(ArcpError::LeaseSubsetViolation(format!(
                "delegated lease does not budget {currency}, so it would be unbounded where the \
                 parent has {currency}:{left} remaining"
            )));
        }
        Ok(())
    }

    fn check_expiry_subset(&self, child: &EffectiveLease) -> Result<(), ArcpError> {
        let Some(parent_at) = self.expires_at else {
            return Ok(());
        };
        let parent_text = Timestamp(parent_at).to_rfc3339();
        match child.expires_at {
            None => Err(ArcpError::LeaseSubsetViolation(format!(
                "delegated lease has no expires_at but the parent expires at {parent_text}"
            ))),
            Some(child_at) if child_at > parent_at => {
                Err(ArcpError::LeaseSubsetViolation(format!(
                    "delegated lease expires_at {} is later than the parent's {parent_text}",
                    Timestamp(child_at).to_rfc3339()
                )))
            }
            Some(_) => Ok(()),
        }
    }
}

/// Parses one namespace's patterns, naming the namespace in the error so a client can find
/// the bad entry in a large lease.
fn parse_patterns(ns: Namespace, patterns: &[String]) -> Result<Vec<Pattern>, ArcpError> {
    patterns
        .iter()
        .map(|s| {
            Pattern::parse(s).map_err(|e| match e {
                ArcpError::InvalidRequest(why) => ArcpError::InvalidRequest(format!("{ns}: {why}")),
                other => other,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_778_700_000 + secs)
    }

    fn wire(entries: &[(&str, &[&str])]) -> Lease {
        entries
            .iter()
            .map(|(ns, ps)| {
                (
                    (*ns).to_owned(),
                    ps.iter().map(|p| (*p).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn lease(entries: &[(&str, &[&str])]) -> EffectiveLease {
        EffectiveLease::from_request(&wire(entries), None, None).expect("valid test lease")
    }

    fn lease_until(entries: &[(&str, &[&str])], at: Option<SystemTime>) -> EffectiveLease {
        EffectiveLease::from_request(&wire(entries), at, None).expect("valid test lease")
    }

    fn violation(r: Result<(), ArcpError>) -> String {
        match r {
            Err(ArcpError::LeaseSubsetViolation(m)) => m,
            other => panic!("expected LEASE_SUBSET_VIOLATION, got {other:?}"),
        }
    }

    fn invalid(r: Result<EffectiveLease, ArcpError>) -> String {
        match r {
            Err(ArcpError::InvalidRequest(m)) => m,
            other => panic!("expected INVALID_REQUEST, got {other:?}"),
        }
    }

    #[test]
    fn namespaces_round_trip_through_their_wire_names() {
        for ns in Namespace::ALL {
            assert_eq!(Namespace::parse(ns.as_str()), Some(ns));
            assert_eq!(ns.to_string(), ns.as_str());
        }
        assert_eq!(Namespace::parse("model.use"), Some(Namespace::ModelUse));
        assert_eq!(Namespace::parse("fs"), None);
        assert_eq!(Namespace::parse("FS.READ"), None);
        assert_eq!(Namespace::parse("fs.delete"), None);
    }

    #[test]
    fn unknown_namespaces_are_named_in_the_error() {
        let m = invalid(EffectiveLease::from_request(
            &wire(&[("fs.read", &["/a/**"]), ("shell.exec", &["*"])]),
            None,
            None,
        ));
        assert!(m.contains("shell.exec"), "{m}");
    }

    #[test]
    fn invalid_patterns_and_budgets_are_invalid_requests() {
        let m = invalid(EffectiveLease::from_request(
            &wire(&[("net.fetch", &["https://x/*", ""])]),
            None,
            None,
        ));
        assert!(m.contains("net.fetch"), "{m}");
        let m = invalid(EffectiveLease::from_request(
            &wire(&[("cost.budget", &["USD:five"])]),
            None,
            None,
        ));
        assert!(m.contains("USD:five"), "{m}");
        let m = invalid(EffectiveLease::from_request(
            &wire(&[("cost.budget", &["USD:5", "USD:6"])]),
            None,
            None,
        ));
        assert!(m.contains("USD"), "{m}");
        let m = invalid(EffectiveLease::from_request(
            &wire(&[]),
            None,
            Some(&[String::new()]),
        ));
        assert!(m.contains("model.use"), "{m}");
    }

    #[test]
    fn an_empty_pattern_list_grants_nothing() {
        let l = lease(&[("tool.call", &[])]);
        assert!(l.patterns(Namespace::ToolCall).is_empty());
        assert!(matches!(
            l.authorize(Namespace::ToolCall, "search", t(0)),
            Err(ArcpError::PermissionDenied(_))
        ));
        assert_eq!(l.to_wire(), wire(&[("tool.call", &[])]));
    }

    #[test]
    fn to_wire_round_trips_the_request() {
        let req = wire(&[
            ("fs.read", &["/workspace/**", "/etc/hosts"]),
            ("net.fetch", &["https://api.example.com/*"]),
            ("cost.budget", &["USD:5.00", "credits:1000"]),
            ("model.use", &["tier-fast/*"]),
            ("agent.delegate", &[]),
        ]);
        let l = EffectiveLease::from_request(&req, None, Some(&["**".to_owned()])).expect("valid");
        assert_eq!(l.to_wire(), req);
        let b = l.budget().expect("budgeted");
        assert_eq!(b.get("USD"), Amount::parse("5").ok());
        assert_eq!(b.get("credits"), Amount::parse("1000").ok());
        assert_eq!(lease(&[]).to_wire(), Lease::new());
        assert_eq!(lease(&[]).budget(), None);
    }

    #[test]
    fn default_model_use_applies_only_when_model_use_is_absent() {
        let defaults = ["tier-fast/*".to_owned()];
        let l =
            EffectiveLease::from_request(&wire(&[("fs.read", &["/a/**"])]), None, Some(&defaults))
                .expect("valid");
        assert_eq!(
            l.authorize(Namespace::ModelUse, "tier-fast/gpt-4o", t(0)),
            Ok(())
        );
        assert_eq!(
            l.to_wire(),
            wire(&[("fs.read", &["/a/**"]), ("model.use", &["tier-fast/*"])])
        );

        let explicit = EffectiveLease::from_request(
            &wire(&[("model.use", &["anthropic/claude-3-haiku-*"])]),
            None,
            Some(&defaults),
        )
        .expect("valid");
        assert!(explicit
            .authorize(Namespace::ModelUse, "tier-fast/gpt-4o", t(0))
            .is_err());

        let none =
            EffectiveLease::from_request(&wire(&[("model.use", &[])]), None, Some(&defaults))
                .expect("valid");
        assert!(none.patterns(Namespace::ModelUse).is_empty());

        // Without a deployment default, absence grants no model (§9.7).
        let l = lease(&[("fs.read", &["/a/**"])]);
        assert!(matches!(
            l.authorize(Namespace::ModelUse, "gpt-4o", t(0)),
            Err(ArcpError::PermissionDenied(_))
        ));
    }

    #[test]
    fn authorize_matches_patterns_of_the_namespace() {
        let l = lease(&[
            ("fs.read", &["/workspace/myapp/**"]),
            ("net.fetch", &["https://api.example.com/*"]),
            ("tool.call", &["search", "fetch_*"]),
        ]);
        assert_eq!(
            l.authorize(Namespace::FsRead, "/workspace/myapp/src/lib.rs", t(0)),
            Ok(())
        );
        assert_eq!(
            l.authorize(Namespace::NetFetch, "https://api.example.com/v1", t(0)),
            Ok(())
        );
        assert_eq!(l.authorize(Namespace::ToolCall, "fetch_page", t(0)), Ok(()));
        assert_eq!(l.authorize(Namespace::ToolCall, "search", t(0)), Ok(()));

        match l.authorize(Namespace::FsWrite, "/workspace/myapp/x", t(0)) {
            Err(ArcpError::PermissionDenied(m)) => {
                assert!(m.contains("fs.write"), "{m}");
                assert!(m.contains("/workspace/myapp/x"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            l.authorize(Namespace::FsRead, "/workspace/other", t(0)),
            Err(ArcpError::PermissionDenied(_))
        ));
        assert!(matches!(
            l.authorize(
                Namespace::NetFetch,
                "https://api.example.com/v1/users",
                t(0)
            ),
            Err(ArcpError::PermissionDenied(_))
        ));
    }

    #[test]
    fn authorize_refuses_cost_budget() {
        let l = lease(&[("cost.budget", &["USD:1"])]);
        assert!(matches!(
            l.authorize(Namespace::CostBudget, "USD:1", t(0)),
            Err(ArcpError::InvalidRequest(_))
        ));
        assert!(l.patterns(Namespace::CostBudget).is_empty());
    }

    #[test]
    fn authorize_fails_at_and_after_expiry() {
        let l = lease_until(&[("tool.call", &["*"])], Some(t(100)));
        assert_eq!(l.authorize(Namespace::ToolCall, "x", t(99)), Ok(()));
        for now in [t(100), t(101)] {
            match l.authorize(Namespace::ToolCall, "x", now) {
                Err(ArcpError::LeaseExpired(m)) => {
                    assert!(m.contains(&Timestamp(t(100)).to_rfc3339()), "{m}")
                }
                other => panic!("{other:?}"),
            }
        }
        // Expiry wins over a missing grant: the lease authorises nothing any more.
        assert!(matches!(
            l.authorize(Namespace::FsWrite, "/x", t(100)),
            Err(ArcpError::LeaseExpired(_))
        ));
    }

    #[test]
    fn covered_child_patterns_are_a_subset() {
        let parent = lease(&[
            ("fs.read", &["/workspace/**"]),
            ("model.use", &["tier-*/*"]),
            ("tool.call", &["search", "fetch_*"]),
        ]);
        let child = lease(&[
            ("fs.read", &["/workspace/myapp/**", "/workspace/a/*.rs"]),
            ("model.use", &["tier-fast/*", "tier-slow/gpt-4o"]),
            ("tool.call", &["search", "fetch_page"]),
        ]);
        assert_eq!(parent.check_subset(&child, None), Ok(()));
        assert_eq!(parent.check_subset(&lease(&[]), None), Ok(()));
        assert_eq!(
            parent.check_subset(&lease(&[("net.fetch", &[])]), None),
            Ok(())
        );
        assert_eq!(parent.check_subset(&parent, None), Ok(()));
    }

    #[test]
    fn uncovered_child_patterns_are_violations() {
        let parent = lease(&[
            ("fs.read", &["/workspace/*"]),
            ("model.use", &["tier-fast/*"]),
        ]);
        let m = violation(parent.check_subset(&lease(&[("fs.read", &["/workspace/**"])]), None));
        assert!(m.contains("/workspace/**") && m.contains("fs.read"), "{m}");
        let m = violation(parent.check_subset(&lease(&[("model.use", &["tier-*/*"])]), None));
        assert!(m.contains("tier-*/*"), "{m}");
        // A namespace the parent lacks covers nothing.
        let m = violation(parent.check_subset(&lease(&[("net.fetch", &["https://x/y"])]), None));
        assert!(m.contains("net.fetch"), "{m}");
        // Same pattern in a different namespace does not count.
        let m = violation(parent.check_subset(&lease(&[("fs.write", &["/workspace/a"])]), None));
        assert!(m.contains("fs.write"), "{m}");
    }

    #[test]
    fn child_budget_must_fit_the_parents_remaining() {
        let parent = lease(&[("cost.budget", &["USD:5.00"])]);
        let mut remaining = parent.budget().cloned().expect("budgeted");
        remaining.charge("USD", Amount::parse("3").expect("valid"));

        let two = lease(&[("cost.budget", &["USD:2.00"])]);
        assert_eq!(parent.check_subset(&two, Some(&remaining)), Ok(()));
        let m = violation(
            parent.check_subset(&lease(&[("cost.budget", &["USD:2.01"])]), Some(&remaining)),
        );
        assert!(m.contains("USD:2.01") && m.contains("USD:2"), "{m}");
        // Without live counters the granted caps are the bound.
        assert_eq!(
            parent.check_subset(&lease(&[("cost.budget", &["USD:5"])]), None),
            Ok(())
        );
        violation(parent.check_subset(&lease(&[("cost.budget", &["USD:5.000001"])]), None));
    }

    #[test]
    fn child_budget_currencies_must_match_the_parents() {
        let parent = lease(&[("cost.budget", &["USD:5", "credits:100"])]);
        let m = violation(parent.check_subset(
            &lease(&[("cost.budget", &["USD:1", "credits:1", "EUR:1"])]),
            None,
        ));
        assert!(m.contains("EUR"), "{m}");
        // Silence on a budgeted currency would leave the child unbounded in it.
        let m = violation(parent.check_subset(&lease(&[("cost.budget", &["USD:1"])]), None));
        assert!(m.contains("credits"), "{m}");
        let m = violation(parent.check_subset(&lease(&[("fs.read", &[])]), None));
        assert!(m.contains("unbounded"), "{m}");
        assert_eq!(
            parent.check_subset(&lease(&[("cost.budget", &["USD:1", "credits:0"])]), None),
            Ok(())
        );
        // An unbudgeted parent has no currency to hand down.
        violation(lease(&[]).check_subset(&lease(&[("cost.budget", &["USD:1"])]), None));
        assert_eq!(
            lease(&[]).check_subset(&lease(&[("cost.budget", &[])]), None),
            Ok(())
        );
    }

    #[test]
    fn an_exhausted_parent_can_only_delegate_zero() {
        let parent = lease(&[("cost.budget", &["USD:0.20"])]);
        let mut remaining = parent.budget().cloned().expect("budgeted");
        remaining.charge("USD", Amount::parse("0.3").expect("valid"));
        violation(parent.check_subset(&lease(&[("cost.budget", &["USD:0"])]), Some(&remaining)));
        remaining = parent.budget().cloned().expect("budgeted");
        remaining.charge("USD", Amount::parse("0.2").expect("valid"));
        assert_eq!(
            parent.check_subset(&lease(&[("cost.budget", &["USD:0"])]), Some(&remaining)),
            Ok(())
        );
    }

    #[test]
    fn child_expiry_must_not_outlive_the_parent() {
        let parent = lease_until(&[("tool.call", &["*"])], Some(t(100)));
        let earlier = lease_until(&[("tool.call", &["a"])], Some(t(50)));
        let same = lease_until(&[], Some(t(100)));
        assert_eq!(parent.check_subset(&earlier, None), Ok(()));
        assert_eq!(parent.check_subset(&same, None), Ok(()));

        let m = violation(parent.check_subset(&lease_until(&[], Some(t(101))), None));
        assert!(m.contains(&Timestamp(t(101)).to_rfc3339()), "{m}");
        assert!(m.contains(&Timestamp(t(100)).to_rfc3339()), "{m}");

        let m = violation(parent.check_subset(&lease(&[]), None));
        assert!(m.contains("no expires_at"), "{m}");

        // A parent without expiry accepts any child expiry.
        assert_eq!(
            lease(&[]).check_subset(&lease_until(&[], Some(t(1))), None),
            Ok(())
        );
    }

    #[test]
    fn inherit_expiry_fills_only_a_missing_expiry() {
        let parent = lease_until(&[("tool.call", &["*"])], Some(t(100)));
        let mut child = lease(&[("tool.call", &["a"])]);
        child.inherit_expiry(&parent);
        assert_eq!(child.expires_at(), Some(t(100)));
        assert_eq!(parent.check_subset(&child, None), Ok(()));

        let mut later = lease_until(&[], Some(t(200)));
        later.inherit_expiry(&parent);
        assert_eq!(later.expires_at(), Some(t(200)));
        violation(parent.check_subset(&later, None));

        let mut open = lease(&[]);
        open.inherit_expiry(&lease(&[]));
        assert_eq!(open.expires_at(), None);
    }
}
