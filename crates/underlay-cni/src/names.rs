//! The host-side veth name of a pod.
//!
//! The name is `udl` + 11 hex digits of a 64-bit FNV-1a hash of
//! `namespace.pod` (`namespace.pod/ifname` for interfaces other than
//! `eth0`). It depends on the pod, not the sandbox, so a pod's interface
//! keeps its name across sandbox restarts and anything keyed on the name
//! (policy chains, metrics, operators' muscle memory) stays put.
//!
//! That stability has a cost: a new sandbox of the same pod can be added
//! before the runtime has deleted the old one, and both want the same name.
//! The plugin resolves it with the link's alias, which records the
//! container ID that owns the link: ADD replaces a same-named link owned by
//! another container (the old sandbox, whose namespace is being replaced),
//! and DEL and GC delete a host link only when the alias names their own
//! container, so a late DEL of the old sandbox never removes the new one.
//!
//! Without Kubernetes arguments the container ID and ifname are hashed
//! instead. 44 bits make an accidental clash between two live pods on one
//! node vanishingly unlikely, but pod names are chosen by tenants and FNV is
//! easily inverted, so a clash can be made on purpose. The agent therefore
//! owns the names: it refuses a name another pod's endpoint holds, and the
//! plugin asks again with the next of [`ATTEMPTS`] candidates (the same key
//! hashed with a counter). The agent records the name it granted, which is
//! the one DEL, CHECK and GC use.

/// The prefix of every host-side interface the plugin creates.
pub const PREFIX: &str = "udl";

/// How many names the plugin tries before it gives up.
pub const ATTEMPTS: u32 = 8;

/// The host-side interface name for a pod's attachment, first choice.
pub fn host_interface(namespace: &str, pod: &str, container_id: &str, ifname: &str) -> String {
    host_interface_candidate(namespace, pod, container_id, ifname, 0)
}

/// The `attempt`th candidate name (0 is [`host_interface`]).
pub fn host_interface_candidate(
    namespace: &str,
    pod: &str,
    container_id: &str,
    ifname: &str,
    attempt: u32,
) -> String {
    let mut key = if namespace.is_empty() || pod.is_empty() {
        format!("{container_id}/{ifname}")
    } else if ifname == "eth0" {
        format!("{namespace}.{pod}")
    } else {
        format!("{namespace}.{pod}/{ifname}")
    };
    if attempt > 0 {
        // NUL occurs in no name, so no first choice equals a retry's key.
        key.push_str(&format!("\0{attempt}"));
    }
    let hash = fnv1a64(key.as_bytes());
    // 11 hex digits = the low 44 bits: "udl" + 11 = 14 bytes, within the
    // kernel's 15-byte limit.
    format!("{PREFIX}{:011x}", hash & ((1u64 << 44) - 1))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_stable_per_pod_and_fits_the_kernel_limit() {
        let a = host_interface("default", "web-0", "c1", "eth0");
        let b = host_interface("default", "web-0", "c2", "eth0");
        assert_eq!(a, b, "a new sandbox of the same pod keeps the name");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("udl"));
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn different_pods_and_interfaces_get_different_names() {
        let names = [
            host_interface("default", "web-0", "c", "eth0"),
            host_interface("default", "web-1", "c", "eth0"),
            host_interface("other", "web-0", "c", "eth0"),
            host_interface("default", "web-0", "c", "net1"),
            host_interface("", "", "c", "eth0"),
            host_interface("", "", "d", "eth0"),
        ];
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
