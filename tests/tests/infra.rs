//! The real Terraform against the emulator: `infra/` formats, validates, applies
//! (through `infra/envs/local`), comes out as declared, grants least privilege, and
//! destroys. Runs on a copy of `infra/` so the repository is never written.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use tether_e2e::{unique_name, Emulator, Stack};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Copies a directory tree, leaving out Terraform's working files.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().to_string_lossy().to_string();
        if name == ".terraform" || name.contains(".tfstate") {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

fn terraform(dir: &Path, args: &[&str], env: &[(String, String)]) -> String {
    let out = Command::new("terraform")
        .current_dir(dir)
        .args(args)
        .env("TF_CLI_CONFIG_FILE", repo().join("infra/terraformrc.hcl"))
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .envs(env.iter().cloned())
        .output()
        .expect("terraform on PATH");
    assert!(
        out.status.success(),
        "terraform {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn terraform_is_formatted_and_valid() {
    terraform(
        &repo().join("infra"),
        &["fmt", "-check", "-recursive", "-no-color"],
        &[],
    );
    let tmp = std::env::temp_dir().join(unique_name("tf-validate"));
    copy_tree(&repo().join("infra"), &tmp);
    for dir in [tmp.clone(), tmp.join("envs/local")] {
        terraform(
            &dir,
            &["init", "-backend=false", "-input=false", "-no-color"],
            &[],
        );
        let out = terraform(&dir, &["validate", "-no-color"], &[]);
        assert!(out.contains("Success"), "{out}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_applies_to_the_emulator_as_declared_and_destroys() {
    let emu = Emulator::shared();
    let prefix = unique_name("tf");
    let tmp = std::env::temp_dir().join(&prefix);
    copy_tree(&repo().join("infra"), &tmp);
    let dir = tmp.join("envs/local");
    let vars = [
        "-var".to_owned(),
        format!("endpoint={}", emu.endpoint),
        "-var".to_owned(),
        format!("name_prefix={prefix}"),
    ];
    let with_vars = |cmd: &[&str]| -> Vec<String> {
        cmd.iter()
            .map(|s| (*s).to_owned())
            .chain(vars.iter().cloned())
            .collect()
    };
    terraform(&dir, &["init", "-input=false", "-no-color"], &[]);
    let apply = with_vars(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    terraform(
        &dir,
        &apply.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    let outputs: Value =
        serde_json::from_str(&terraform(&dir, &["output", "-json", "-no-color"], &[]))
            .expect("outputs");

    let sdk = emu.sdk_config().await;
    let table = format!("{prefix}-main");
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let desc = ddb
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .expect("table")
        .table
        .expect("desc");
    let keys: Vec<(String, String)> = desc
        .key_schema()
        .iter()
        .map(|k| {
            (
                k.attribute_name().to_owned(),
                k.key_type().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        vec![("pk".into(), "HASH".into()), ("sk".into(), "RANGE".into())]
    );
    let gsi = &desc.global_secondary_indexes()[0];
    assert_eq!(gsi.index_name(), Some("gsi1"));
    let gsi_keys: Vec<&str> = gsi
        .key_schema()
        .iter()
        .map(|k| k.attribute_name())
        .collect();
    assert_eq!(gsi_keys, vec!["gsi1pk", "gsi1sk"]);
    assert_eq!(
        desc.billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some("PAY_PER_REQUEST")
    );
    let ttl = ddb
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .expect("ttl");
    let ttl = ttl.time_to_live_description().expect("ttl desc");
    assert_eq!(ttl.attribute_name(), Some("ttl"));
    assert_eq!(
        ttl.time_to_live_status().map(|s| s.as_str()),
        Some("ENABLED")
    );
    let pitr = ddb
        .describe_continuous_backups()
        .table_name(&table)
        .send()
        .await
        .expect("backups");
    let pitr_status = pitr
        .continuous_backups_description()
        .and_then(|c| c.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .map(|s| s.as_str().to_owned());
    assert_eq!(pitr_status.as_deref(), Some("ENABLED"));

    // The test harness provisions the same table shape the Terraform declares.
    let stack = Stack::create(emu).await;
    let harness = ddb
        .describe_table()
        .table_name(&stack.table)
        .send()
        .await
        .expect("t")
        .table
        .expect("d");
    let attrs = |t: &aws_sdk_dynamodb::types::TableDescription| -> BTreeSet<String> {
        t.attribute_definitions()
            .iter()
            .map(|a| a.attribute_name().to_owned())
            .collect()
    };
    assert_eq!(attrs(&harness), attrs(&desc));
    assert_eq!(harness.key_schema(), desc.key_schema());

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = outputs["queue_urls"]["value"]["observations"]
        .as_str()
        .expect("queue url");
    let dlq_url = outputs["dlq_urls"]["value"]["observations"]
        .as_str()
        .expect("dlq url");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .expect("queue attributes");
    let redrive: Value = serde_json::from_str(
        attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy))
            .expect("redrive policy"),
    )
    .expect("redrive json");
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("dlq attributes")
        .attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("dlq arn");
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "5"
    );

    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!("{prefix}-artifacts");
    // moto 5.2 names the root element of GetBucketVersioning's answer differently
    // from AWS, which the SDK refuses; read the (unsigned) XML directly instead.
    let versioning = ureq::get(format!("{}/{bucket}?versioning", emu.endpoint))
        .call()
        .expect("versioning")
        .body_mut()
        .read_to_string()
        .expect("body");
    assert!(
        versioning.contains("<Status>Enabled</Status>"),
        "{versioning}"
    );
    let pab = s3
        .get_public_access_block()
        .bucket(&bucket)
        .send()
        .await
        .expect("public access block")
        .public_access_block_configuration
        .expect("config");
    assert_eq!(
        (
            pab.block_public_acls,
            pab.block_public_policy,
            pab.ignore_public_acls,
            pab.restrict_public_buckets
        ),
        (Some(true), Some(true), Some(true), Some(true))
    );
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = secrets
        .describe_secret()
        .secret_id(format!("{prefix}/signing-keys"))
        .send()
        .await
        .expect("secret");
    assert_eq!(
        secret.name(),
        Some(format!("{prefix}/signing-keys").as_str())
    );

    // The runner is configured from this output: every variable it requires is there.
    let env = &outputs["env"]["value"];
    assert_eq!(env["TETHER_TABLE"], table.as_str());
    assert_eq!(env["TETHER_BUCKET"], bucket.as_str());
    assert_eq!(env["TETHER_QUEUE_URL_OBSERVATIONS"], queue_url);
    assert_eq!(
        env["TETHER_SIGNING_SECRET_ID"],
        format!("{prefix}/signing-keys").as_str()
    );

    // Least privilege: exactly these actions, no wildcard action or resource.
    let policy: Value = serde_json::from_str(
        outputs["function_policies"]["value"]["api"]
            .as_str()
            .expect("policy"),
    )
    .expect("json");
    let mut actions = BTreeSet::new();
    for st in policy["Statement"].as_array().expect("statements") {
        assert_eq!(st["Effect"], "Allow");
        for a in st["Action"].as_array().expect("actions") {
            actions.insert(a.as_str().expect("action").to_owned());
        }
        for r in st["Resource"].as_array().expect("resources") {
            let r = r.as_str().expect("resource");
            assert!(
                r != "*" && r.contains(&prefix),
                "resource {r} is not pinned to this stack"
            );
        }
    }
    let want: BTreeSet<String> = [
        "dynamodb:BatchGetItem",
        "dynamodb:ConditionCheckItem",
        "dynamodb:DeleteItem",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
        "dynamodb:TransactWriteItems",
        "dynamodb:UpdateItem",
        "sqs:SendMessage",
        "s3:GetObject",
        "s3:PutObject",
        "secretsmanager:GetSecretValue",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(actions, want);

    let destroy = with_vars(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    terraform(
        &dir,
        &destroy.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    let gone = ddb.describe_table().table_name(&table).send().await;
    assert!(gone.is_err(), "table still exists after destroy");
    let _ = std::fs::remove_dir_all(&tmp);
}
