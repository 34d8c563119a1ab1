//! Fuzzing of everything the plugin parses from the runtime: the network
//! configuration, prevResult, CNI_ARGS and the CNI_* environment. Nothing
//! may panic; every rejection is a CNI error with a defined code. Replays
//! the kept corpus in /fuzz first.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use underlay_cni::types::Version;
use underlay_cni::{config, env, run_cni};

const CODES: &[u32] = &[
    1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 103, 104, 105, 106,
];

fn corpus(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(dir)
}

/// Parses a configuration and exercises everything reachable from it.
fn exercise_config(bytes: &[u8]) {
    match config::parse(bytes) {
        Ok(conf) => {
            if let Some(prev) = conf.prev_result {
                for v in [Version::V0_4_0, Version::V1_0_0, Version::V1_1_0] {
                    let doc = prev.to_value(v);
                    let back = underlay_cni::types::CniResult::from_value(&doc)
                        .expect("a printed result parses again");
                    assert_eq!(back.ips, prev.ips);
                }
            }
        }
        Err(e) => assert!(CODES.contains(&e.code), "undefined code {}", e.code),
    }
    // VERSION never depends on stdin.
    let out = run_cni(
        |k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()),
        bytes,
    );
    assert_eq!(out.exit_code, 0);
    // A command whose environment is incomplete fails with code 4 whatever
    // stdin holds, and the error is valid JSON.
    let out = run_cni(|k| (k == "CNI_COMMAND").then(|| "ADD".to_string()), bytes);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("error JSON");
    assert_eq!(v["code"], 4);
}

fn exercise_args(s: &str) {
    if let Err(e) = env::parse_cni_args(s) {
        assert_eq!(e.code, 4);
    }
}

#[test]
fn the_kept_corpus_parses_or_fails_cleanly() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus("cni-config")).expect("fuzz/corpus/cni-config") {
        let path = entry.unwrap().path();
        exercise_config(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n >= 10, "the config corpus has {n} files");
    let args = std::fs::read_to_string(corpus("cni-args/cases.txt")).unwrap();
    for line in args.lines() {
        exercise_args(line);
    }
}

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        "[a-z0-9./:_-]{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("1.1.0"),
            Just("1.0.0"),
            Just("0.4.0"),
            Just("10.0.0.1/32"),
            Just("fd00::1/128"),
            Just("169.254.1.1"),
            Just("/run/netns/x")
        ]
        .prop_map(serde_json::Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let keys = prop_oneof![
        Just("cniVersion".to_string()),
        Just("name".to_string()),
        Just("type".to_string()),
        Just("mtu".to_string()),
        Just("agentSocket".to_string()),
        Just("agentTimeoutSeconds".to_string()),
        Just("prevResult".to_string()),
        Just("ips".to_string()),
        Just("address".to_string()),
        Just("interface".to_string()),
        Just("interfaces".to_string()),
        Just("routes".to_string()),
        Just("dst".to_string()),
        Just("gw".to_string()),
        Just("ipam".to_string()),
        Just("runtimeConfig".to_string()),
        Just("cni.dev/valid-attachments".to_string()),
        Just("containerID".to_string()),
        Just("ifname".to_string()),
        "[a-zA-Z]{1,6}",
    ];
    json_leaf().prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "../../fuzz/proptest-regressions/fuzz_parsing.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        exercise_config(&bytes);
    }

    #[test]
    fn structured_configurations_never_panic(mut v in json_value(), version in prop_oneof![Just("1.1.0"), Just("0.4.0"), Just("x")]) {
        if let Some(obj) = v.as_object_mut() {
            obj.insert("cniVersion".into(), version.into());
        }
        exercise_config(v.to_string().as_bytes());
    }

    #[test]
    fn cni_args_never_panic(s in "[A-Za-z0-9_=;.-]{0,64}") {
        exercise_args(&s);
    }

    #[test]
    fn environments_never_panic(
        vars in prop::collection::hash_map(
            prop_oneof![
                Just("CNI_COMMAND"), Just("CNI_CONTAINERID"), Just("CNI_NETNS"),
                Just("CNI_IFNAME"), Just("CNI_ARGS"), Just("CNI_PATH"),
            ],
            prop_oneof![
                Just("ADD".to_string()), Just("DEL".to_string()), Just("CHECK".to_string()),
                Just("GC".to_string()), Just("STATUS".to_string()), Just("VERSION".to_string()),
                "\\PC{0,20}",
            ],
            0..6,
        )
    ) {
        let map: HashMap<String, String> = vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Err(e) = env::parse(|k| map.get(k).cloned()) {
            prop_assert!(CODES.contains(&e.code));
        }
    }
}
