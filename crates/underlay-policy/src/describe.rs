//! Policy decisions in words, for operators: which policies decide each
//! direction of a pod, named the way `kubectl` names them.

use crate::cluster::Tier;
use crate::index::Index;
use crate::model::{Direction, Endpoint};

/// How policies are named in reports (the evaluator's reasons use the
/// same names).
pub use crate::eval::{cluster_policy, network_policy};

/// One direction of a pod: whether anything decides it, and what, in
/// evaluation order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    pub isolated: bool,
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    pub ingress: Side,
    pub egress: Side,
    /// False while the index has no Pod object for the endpoint (both
    /// directions are dropped then).
    pub pod_known: bool,
}

/// The policies deciding each direction of `ep`: the Admin tier's, then
/// the NetworkPolicies, or, when none selects the pod in that direction,
/// the Baseline tier's (which only then take part). Audited policies are
/// listed with " (audit)"; only enforced ones isolate.
pub fn isolation(index: &Index, ep: &Endpoint) -> Isolation {
    let pod_known = index.pod(&ep.pod).is_some();
    let selection = index.selection(ep);
    let mode = index.default_mode();
    let enforced = selection.enforced(mode);
    let audit = |audited: bool| if audited { " (audit)" } else { "" };
    let side = |dir: Direction| {
        let mut policies: Vec<String> = selection
            .tier(Tier::Admin, dir)
            .iter()
            .map(|p| format!("{}{}", cluster_policy(p), audit(p.mode.audited(mode))))
            .collect();
        let nps = selection.get(dir);
        if nps.is_empty() {
            policies.extend(
                selection
                    .tier(Tier::Baseline, dir)
                    .iter()
                    .map(|p| format!("{}{}", cluster_policy(p), audit(p.mode.audited(mode)))),
            );
        } else {
            policies.extend(
                nps.iter()
                    .map(|p| format!("{}{}", network_policy(p), audit(p.mode.audited(mode)))),
            );
        }
        Side {
            isolated: !pod_known || !enforced.open(dir),
            policies,
        }
    };
    Isolation {
        ingress: side(Direction::Ingress),
        egress: side(Direction::Egress),
        pod_known,
    }
}
