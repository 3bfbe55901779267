//! Against the real local stack: the command writes control records that read back as the state
//! an operator expects, through the library and through the binary.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::BTreeMap;
use std::process::Command;

use ve_ctl::{CtlError, Plan, TenantSpec, TenantUpdate, key_sha256};
use ve_schema::{AlertRule, Codec};
use ve_testkit::{Stack, unique};

fn clients() -> (ve_kafka::KafkaConfig, Codec, Stack) {
    let stack = Stack::require();
    let kafka = stack.kafka(&unique("ctl"));
    let codec = Codec::new(&stack.registry()).unwrap();
    (kafka, codec, stack)
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_lifecycle_through_the_library() {
    let (kafka, codec, _) = clients();
    let topic = unique("ctl_tenants");

    let mut spec = TenantSpec::new("acme", "Acme", Plan::Free);
    spec.key_id = Some("first".into());
    let (tenant, key) = ve_ctl::create_tenant(&kafka, &codec, &topic, spec)
        .await
        .unwrap();
    assert_eq!(tenant.plan, "free");
    assert_eq!(tenant.retention_days, 1);
    assert_eq!(tenant.api_keys.len(), 1);
    assert_eq!(
        tenant.api_keys[0].sha256,
        key_sha256(key.api_key.expose()),
        "only the hash is stored"
    );

    // The stored record is what was written, and holds no secret.
    let read = ve_ctl::read_tenant(&kafka, &codec, &topic, "acme")
        .await
        .unwrap();
    assert_eq!(read, tenant);
    assert!(!format!("{read:?}").contains(key.api_key.expose()));

    let again = ve_ctl::create_tenant(
        &kafka,
        &codec,
        &topic,
        TenantSpec::new("acme", "Other", Plan::Paid),
    )
    .await;
    assert!(matches!(again, Err(CtlError::Exists(_))), "{again:?}");

    let (with_two, second) = ve_ctl::add_key(&kafka, &codec, &topic, "acme", None)
        .await
        .unwrap();
    assert_eq!(with_two.api_keys.len(), 2);
    assert_ne!(second.api_key.expose(), key.api_key.expose());

    let revoked = ve_ctl::revoke_key(&kafka, &codec, &topic, "acme", "first")
        .await
        .unwrap();
    assert!(revoked.api_keys[0].revoked);
    assert!(!revoked.api_keys[1].revoked);

    let update = TenantUpdate {
        plan: Some(Plan::Paid),
        ..TenantUpdate::default()
    };
    let paid = ve_ctl::update_tenant(&kafka, &codec, &topic, "acme", update)
        .await
        .unwrap();
    assert_eq!((paid.plan.as_str(), paid.retention_days), ("paid", 90));
    assert_eq!(paid.api_keys, revoked.api_keys, "keys survive an update");

    let all = ve_ctl::read_tenants(&kafka, &codec, &topic).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all["acme"], paid);

    ve_ctl::delete_tenant(&kafka, &codec, &topic, "acme")
        .await
        .unwrap();
    let gone = ve_ctl::read_tenant(&kafka, &codec, &topic, "acme").await;
    assert!(matches!(gone, Err(CtlError::NotFound(_))), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cmdb_and_rules_through_the_library() {
    let (kafka, codec, _) = clients();
    let cmdb = unique("ctl_cmdb");
    let rules = unique("ctl_rules");

    let tags = BTreeMap::from([("Env".to_owned(), "prod".to_owned())]);
    let _ = ve_ctl::set_cmdb_host(&kafka, &codec, &cmdb, "acme", "web-1", tags, false)
        .await
        .unwrap();
    let more = BTreeMap::from([("team".to_owned(), "x".to_owned())]);
    let merged = ve_ctl::set_cmdb_host(&kafka, &codec, &cmdb, "acme", "web-1", more, true)
        .await
        .unwrap();
    assert_eq!(
        merged.tags,
        BTreeMap::from([
            ("env".to_owned(), "prod".to_owned()),
            ("team".to_owned(), "x".to_owned())
        ])
    );
    let hosts = ve_ctl::read_cmdb(&kafka, &codec, &cmdb).await.unwrap();
    assert_eq!(hosts["acme/web-1"], merged);

    let rule = AlertRule {
        rule_id: "cpu".into(),
        name: "cpu high".into(),
        kind: "threshold".into(),
        metric: Some("cpu_load".into()),
        event_match: None,
        operator: ">".into(),
        threshold: 90.0,
        for_seconds: 60,
        group_by: vec!["host".into()],
        enabled: true,
    };
    let _ = ve_ctl::set_rule(&kafka, &codec, &rules, "acme", rule.clone())
        .await
        .unwrap();
    assert_eq!(
        ve_ctl::read_rules(&kafka, &codec, &rules).await.unwrap()["acme/cpu"],
        rule
    );
    ve_ctl::delete_rule(&kafka, &rules, "acme", "cpu")
        .await
        .unwrap();
    assert!(
        ve_ctl::read_rules(&kafka, &codec, &rules)
            .await
            .unwrap()
            .is_empty()
    );
}

fn ctl(stack: &Stack, topics: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ve-ctl"));
    let _ = command.args(["--brokers", &stack.brokers, "--registry", &stack.registry]);
    for (flag, topic) in topics {
        let _ = command.args([*flag, *topic]);
    }
    let output = command.args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_prints_the_key_once_and_stores_its_hash() {
    let (_, _, stack) = clients();
    let tenants = unique("ctl_bin_tenants");
    let cmdb = unique("ctl_bin_cmdb");
    let rules = unique("ctl_bin_rules");
    let topics = [
        ("--tenants-topic", tenants.as_str()),
        ("--cmdb-topic", cmdb.as_str()),
        ("--rules-topic", rules.as_str()),
    ];

    let (code, out, err) = ctl(
        &stack,
        &topics,
        &[
            "tenant",
            "create",
            "--id",
            "acme",
            "--name",
            "Acme",
            "--plan",
            "enterprise",
            "--retention-days",
            "400",
            "--currency",
            "EUR",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let api_key = created["api_key"].as_str().unwrap().to_owned();
    assert!(api_key.starts_with("ve_"), "{out}");
    assert_eq!(created["authorization"], format!("Bearer acme:{api_key}"));

    let (code, out, err) = ctl(&stack, &topics, &["tenant", "show", "--id", "acme"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains(&api_key), "show must not print the key");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["retention_days"], 400);
    assert_eq!(shown["currency"], "EUR");
    assert_eq!(shown["api_keys"][0]["sha256"], key_sha256(&api_key));

    let (code, out, err) = ctl(
        &stack,
        &topics,
        &["tenant", "create", "--id", "bad/id", "--plan", "free"],
    );
    assert_eq!(code, 2, "a bad id is a usage error: {out}{err}");

    let (code, out, err) = ctl(
        &stack,
        &topics,
        &[
            "cmdb", "set", "--tenant", "acme", "--host", "web-1", "--tag", "env=prod", "--tag",
            "team=x",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(
        &stack,
        &topics,
        &[
            "rule",
            "set",
            "--tenant",
            "acme",
            "--id",
            "cpu",
            "--metric",
            "cpu_load",
            "--threshold",
            "90",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(&stack, &topics, &["rule", "list", "--tenant", "acme"]);
    assert_eq!(code, 0, "{out}{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["acme/cpu"]["threshold"], 90.0);
    let (code, out, err) = ctl(&stack, &topics, &["cmdb", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["acme/web-1"]["tags"]["team"], "x");
}
