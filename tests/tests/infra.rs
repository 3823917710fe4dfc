//! The real Terraform against the emulator: `infra/` formats, validates, applies
//! (through `infra/envs/local`), comes out as declared, grants least privilege, and
//! destroys. Runs on a copy of `infra/` so the repository is never written.
//!
//! Terraform gets `hashicorp/aws` from the filesystem mirror named in
//! `infra/terraformrc.hcl` (no registry access needed).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use tether_e2e::{unique_name, Emulator, Stack};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Copies a directory tree, leaving out Terraform's working files and state.
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

fn run_terraform(dir: &Path, args: &[String]) -> std::process::Output {
    Command::new("terraform")
        .current_dir(dir)
        .args(args)
        .env("TF_CLI_CONFIG_FILE", repo().join("infra/terraformrc.hcl"))
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .expect("terraform (>= 1.11) on PATH")
}

/// Runs terraform; on failure panics with its stdout and stderr. Returns stdout.
fn terraform(dir: &Path, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let out = run_terraform(dir, &args);
    assert!(
        out.status.success(),
        "terraform {args:?} in {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Destroys the applied stack if the test fails before its own destroy (the moto
/// server dies with the test binary anyway; a LocalStack does not).
struct DestroyOnPanic {
    dir: PathBuf,
    vars: Vec<String>,
    armed: bool,
}

impl Drop for DestroyOnPanic {
    fn drop(&mut self) {
        if self.armed {
            let mut args = vec![
                "destroy".to_owned(),
                "-auto-approve".to_owned(),
                "-input=false".to_owned(),
                "-no-color".to_owned(),
            ];
            args.extend(self.vars.iter().cloned());
            let _ = run_terraform(&self.dir, &args);
        }
    }
}

/// A copy of `infra/` applied to the emulator through `envs/local`, with the
/// endpoint, `name_prefix` and `extra` variables; destroyed if the test panics.
struct Applied {
    dir: PathBuf,
    vars: Vec<String>,
    guard: DestroyOnPanic,
    outputs: Value,
}

impl Applied {
    fn apply(emu: &Emulator, prefix: &str, tmp: &Path, extra: &[String]) -> Self {
        let dir = tmp.join("envs/local");
        let mut vars = vec![
            "-var".to_owned(),
            format!("endpoint={}", emu.endpoint),
            "-var".to_owned(),
            format!("name_prefix={prefix}"),
        ];
        vars.extend_from_slice(extra);
        terraform(&dir, &["init", "-input=false", "-no-color"]);
        let guard = DestroyOnPanic {
            dir: dir.clone(),
            vars: vars.clone(),
            armed: true,
        };
        let started = std::time::Instant::now();
        with_vars(
            &dir,
            &["apply", "-auto-approve", "-input=false", "-no-color"],
            &vars,
        );
        eprintln!("terraform apply to the emulator: {:?}", started.elapsed());
        let outputs = serde_json::from_str(&terraform(&dir, &["output", "-json", "-no-color"]))
            .expect("outputs");
        Self {
            dir,
            vars,
            guard,
            outputs,
        }
    }

    fn output(&self, name: &str) -> Value {
        self.outputs[name]["value"].clone()
    }

    /// Every resource in the state.
    fn resources(&self) -> Vec<Value> {
        let show: Value =
            serde_json::from_str(&terraform(&self.dir, &["show", "-json", "-no-color"]))
                .expect("show");
        let mut out = Vec::new();
        state_resources(&show["values"]["root_module"], &mut out);
        out
    }

    fn destroy(mut self) {
        with_vars(
            &self.dir,
            &["destroy", "-auto-approve", "-input=false", "-no-color"],
            &self.vars,
        );
        self.guard.armed = false;
    }
}

/// `terraform CMD... VARS...`.
fn with_vars(dir: &Path, cmd: &[&str], vars: &[String]) -> String {
    let args: Vec<&str> = cmd
        .iter()
        .copied()
        .chain(vars.iter().map(String::as_str))
        .collect();
    terraform(dir, &args)
}

#[test]
fn terraform_is_formatted_and_valid() {
    terraform(
        &repo().join("infra"),
        &["fmt", "-check", "-recursive", "-diff", "-no-color"],
    );
    let tmp = std::env::temp_dir().join(unique_name("tf-validate"));
    copy_tree(&repo().join("infra"), &tmp);
    for dir in [tmp.clone(), tmp.join("envs/local")] {
        terraform(
            &dir,
            &["init", "-backend=false", "-input=false", "-no-color"],
        );
        let out = terraform(&dir, &["validate", "-json", "-no-color"]);
        let v: Value = serde_json::from_str(&out).expect("validate -json");
        assert_eq!(v["valid"], true, "{}: {out}", dir.display());
        assert_eq!(v["error_count"], 0, "{out}");
        assert_eq!(v["warning_count"], 0, "{out}");
    }
    // The committed lock file is the one init derives from the mirror (init keeps it).
    let committed = std::fs::read_to_string(repo().join("infra/envs/local/.terraform.lock.hcl"))
        .expect("infra/envs/local/.terraform.lock.hcl is committed");
    let after_init = std::fs::read_to_string(tmp.join("envs/local/.terraform.lock.hcl"))
        .expect("lock after init");
    assert_eq!(committed, after_init);
    assert!(
        committed.contains("version     = \"5.100.0\""),
        "{committed}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The value of a one-element SQS attribute.
async fn queue_attr(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    name: aws_sdk_sqs::types::QueueAttributeName,
) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&name).cloned())
        .unwrap_or_else(|| panic!("{url} has no {name:?}"))
}

fn set<S: AsRef<str>>(items: &[S]) -> BTreeSet<String> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    match v {
        Value::String(s) => set(&[s]),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("string").to_owned())
            .collect(),
        other => panic!("expected a string or a list, got {other}"),
    }
}

/// Every resource in `terraform show -json` state, through child modules.
fn state_resources(module: &Value, out: &mut Vec<Value>) {
    if let Some(rs) = module["resources"].as_array() {
        out.extend(rs.iter().cloned());
    }
    if let Some(children) = module["child_modules"].as_array() {
        for c in children {
            state_resources(c, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_applies_to_the_emulator_as_declared_and_destroys() {
    use aws_sdk_sqs::types::QueueAttributeName as Q;

    let emu = Emulator::shared();
    let prefix = unique_name("tf");
    let tmp = std::env::temp_dir().join(&prefix);
    copy_tree(&repo().join("infra"), &tmp);
    let applied = Applied::apply(emu, &prefix, &tmp, &[]);
    let out = |name: &str| applied.output(name);

    // ---- table ------------------------------------------------------------------
    let sdk = emu.sdk_config().await;
    let table = format!("{prefix}-main");
    assert_eq!(out("table_name"), table.as_str());
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let desc = ddb
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .expect("table")
        .table
        .expect("desc");
    assert_eq!(out("table_arn"), desc.table_arn().expect("arn"));
    let keys = |ks: &[aws_sdk_dynamodb::types::KeySchemaElement]| -> Vec<(String, String)> {
        ks.iter()
            .map(|k| {
                (
                    k.attribute_name().to_owned(),
                    k.key_type().as_str().to_owned(),
                )
            })
            .collect()
    };
    let hash_range = |h: &str, r: &str| vec![(h.into(), "HASH".into()), (r.into(), "RANGE".into())];
    assert_eq!(keys(desc.key_schema()), hash_range("pk", "sk"));
    let attr_types: BTreeSet<(String, String)> = desc
        .attribute_definitions()
        .iter()
        .map(|a| {
            (
                a.attribute_name().to_owned(),
                a.attribute_type().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        attr_types,
        ["gsi1pk", "gsi1sk", "pk", "sk"]
            .iter()
            .map(|n| ((*n).to_owned(), "S".to_owned()))
            .collect()
    );
    assert_eq!(desc.global_secondary_indexes().len(), 1);
    let gsi = &desc.global_secondary_indexes()[0];
    assert_eq!(gsi.index_name(), Some("gsi1"));
    assert_eq!(keys(gsi.key_schema()), hash_range("gsi1pk", "gsi1sk"));
    assert_eq!(
        gsi.projection()
            .and_then(|p| p.projection_type())
            .map(|t| t.as_str()),
        Some("ALL")
    );
    assert_eq!(
        desc.billing_mode_summary()
            .and_then(|b| b.billing_mode())
            .map(|m| m.as_str()),
        Some("PAY_PER_REQUEST")
    );
    assert_eq!(
        desc.sse_description()
            .and_then(|s| s.status())
            .map(|s| s.as_str()),
        Some("ENABLED")
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

    // ---- queues -----------------------------------------------------------------
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_urls = out("queue_urls");
    let dlq_urls = out("dlq_urls");
    let queue_names: Option<BTreeSet<String>> =
        queue_urls.as_object().map(|m| m.keys().cloned().collect());
    let all_queues = [
        "observations",
        "analyzer",
        "planner",
        "policy-gate",
        "executor",
        "verifier",
        "memory",
    ];
    assert_eq!(queue_names, Some(set(&all_queues)));
    // Every queue has its own dead-letter queue and redrive policy.
    for q in all_queues {
        let url = queue_urls[q].as_str().expect("queue url");
        let dlq = dlq_urls[q].as_str().expect("dlq url");
        assert!(url.ends_with(&format!("/{prefix}-{q}")), "{url}");
        assert!(dlq.ends_with(&format!("/{prefix}-{q}-dlq")), "{dlq}");
        let redrive: Value =
            serde_json::from_str(&queue_attr(&sqs, url, Q::RedrivePolicy).await).expect("json");
        assert_eq!(
            redrive["deadLetterTargetArn"],
            queue_attr(&sqs, dlq, Q::QueueArn).await.as_str(),
            "{q}"
        );
    }
    let queue_url = queue_urls["observations"].as_str().expect("queue url");
    let dlq_url = dlq_urls["observations"].as_str().expect("dlq url");
    assert!(
        queue_url.ends_with(&format!("/{prefix}-observations")),
        "{queue_url}"
    );
    assert!(
        dlq_url.ends_with(&format!("/{prefix}-observations-dlq")),
        "{dlq_url}"
    );
    let redrive: Value =
        serde_json::from_str(&queue_attr(&sqs, queue_url, Q::RedrivePolicy).await).expect("json");
    let dlq_arn = queue_attr(&sqs, dlq_url, Q::QueueArn).await;
    let queue_arn = queue_attr(&sqs, queue_url, Q::QueueArn).await;
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    // AWS answers a number, some emulators a string.
    assert_eq!(
        redrive["maxReceiveCount"].to_string().trim_matches('"'),
        "5"
    );
    let visibility: u64 = queue_attr(&sqs, queue_url, Q::VisibilityTimeout)
        .await
        .parse()
        .expect("number");
    assert_eq!(
        visibility, 180,
        "visibility timeout: 6 x the longest function timeout (30 s)"
    );
    assert_eq!(
        queue_attr(&sqs, dlq_url, Q::MessageRetentionPeriod).await,
        (14 * 24 * 3600).to_string()
    );
    for url in [queue_url, dlq_url] {
        assert_eq!(
            queue_attr(&sqs, url, Q::SqsManagedSseEnabled).await,
            "true",
            "{url}"
        );
    }

    // ---- bucket -----------------------------------------------------------------
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!("{prefix}-artifacts");
    assert_eq!(out("bucket_name"), bucket.as_str());
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
    let sse = s3
        .get_bucket_encryption()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket encryption");
    let algorithms: Vec<String> = sse
        .server_side_encryption_configuration()
        .expect("sse config")
        .rules()
        .iter()
        .filter_map(|r| r.apply_server_side_encryption_by_default())
        .map(|d| d.sse_algorithm().as_str().to_owned())
        .collect();
    assert_eq!(algorithms, vec!["AES256".to_owned()]);
    let ownership = s3
        .get_bucket_ownership_controls()
        .bucket(&bucket)
        .send()
        .await
        .expect("ownership controls");
    let rules: Vec<String> = ownership
        .ownership_controls()
        .expect("controls")
        .rules()
        .iter()
        .map(|r| r.object_ownership().as_str().to_owned())
        .collect();
    assert_eq!(rules, vec!["BucketOwnerEnforced".to_owned()]);

    // ---- secret: exists, holds no value (key material never enters the state) ---
    let secret_id = format!("{prefix}/signing-keys");
    assert_eq!(out("signing_secret_id"), secret_id.as_str());
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret = secrets
        .describe_secret()
        .secret_id(&secret_id)
        .send()
        .await
        .expect("secret");
    assert_eq!(secret.name(), Some(secret_id.as_str()));
    let secret_arn = secret.arn().expect("secret arn").to_owned();
    let value = secrets
        .get_secret_value()
        .secret_id(&secret_id)
        .send()
        .await;
    assert!(
        value.is_err(),
        "the secret has a value right after apply: Terraform must not write key material"
    );

    // ---- outputs the runner and operators use -------------------------------------
    let env = out("env");
    let url_of = |q: &str| queue_urls[q].as_str().expect("queue url").to_owned();
    let want_env = serde_json::json!({
        "TETHER_TABLE": table,
        "TETHER_BUCKET": bucket,
        "TETHER_QUEUE_URL_OBSERVATIONS": queue_url,
        "TETHER_QUEUE_URL_ANALYZER": url_of("analyzer"),
        "TETHER_QUEUE_URL_PLANNER": url_of("planner"),
        "TETHER_QUEUE_URL_POLICY_GATE": url_of("policy-gate"),
        "TETHER_QUEUE_URL_EXECUTOR": url_of("executor"),
        "TETHER_QUEUE_URL_VERIFIER": url_of("verifier"),
        "TETHER_QUEUE_URL_MEMORY": url_of("memory"),
        "TETHER_SIGNING_SECRET_ID": secret_id,
        "TETHER_OPERATOR_JWT_ISSUER": "tether",
        "TETHER_OPERATOR_JWT_AUDIENCE": "tether-operators",
        "TETHER_MAX_RECEIVES": "5",
    });
    assert_eq!(env, want_env);
    assert_eq!(out("api_url"), Value::Null, "no packages: no function URL");
    let role_arn = out("function_role_arns")["api"]
        .as_str()
        .expect("api role arn")
        .to_owned();
    assert!(
        role_arn.ends_with(&format!(":role/{prefix}-api")),
        "{role_arn}"
    );

    // ---- least privilege, from the state: exact actions on exact resources --------
    let resources = applied.resources();
    let types: BTreeSet<String> = resources
        .iter()
        .map(|r| r["type"].as_str().expect("type").to_owned())
        .collect();
    assert!(
        !types.contains("aws_secretsmanager_secret_version"),
        "a secret version is in the state: {types:?}"
    );
    assert!(
        !types.contains("aws_lambda_function"),
        "no packages given, yet functions were created: {types:?}"
    );
    let policies: Vec<&Value> = resources
        .iter()
        .filter(|r| r["type"] == "aws_iam_role_policy")
        .collect();
    assert_eq!(
        policies.len(),
        8,
        "one policy per function (api and seven roles)"
    );
    let policy_json = policies
        .iter()
        .find(|p| p["values"]["name"] == format!("{prefix}-api").as_str())
        .and_then(|p| p["values"]["policy"].as_str())
        .expect("api policy");
    assert_eq!(out("function_policies")["api"], policy_json);
    let policy: Value = serde_json::from_str(policy_json).expect("policy json");
    let account = desc
        .table_arn()
        .and_then(|a| a.split(':').nth(4))
        .expect("account in the table arn")
        .to_owned();
    let table_arn = desc.table_arn().expect("arn").to_owned();
    let arn_of = |q: &str| {
        let url = queue_urls[q].as_str().expect("queue url").to_owned();
        let sqs = sqs.clone();
        async move { queue_attr(&sqs, &url, Q::QueueArn).await }
    };
    // GET /v1/status: read-only checks of the table, the secret, every queue and DLQ.
    let mut status_resources = vec![table_arn.clone(), secret_arn.to_string()];
    for urls in [queue_urls.clone(), out("dlq_urls")] {
        for url in urls.as_object().expect("queue urls").values() {
            status_resources.push(queue_attr(&sqs, url.as_str().expect("url"), Q::QueueArn).await);
        }
    }
    assert_eq!(
        status_resources.len(),
        16,
        "table, secret, 7 queues, 7 DLQs"
    );
    let want: BTreeSet<(BTreeSet<String>, BTreeSet<String>)> = [
        (
            set(&[
                "dynamodb:DescribeTable",
                "secretsmanager:DescribeSecret",
                "sqs:GetQueueAttributes",
            ]),
            set(&status_resources),
        ),
        // Each queue's oldest-message age: GetMetricData takes no resource ARN.
        (set(&["cloudwatch:GetMetricData"]), set(&["*"])),
        (
            set(&[
                "dynamodb:BatchGetItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:DeleteItem",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:Query",
                "dynamodb:TransactWriteItems",
                "dynamodb:UpdateItem",
            ]),
            set(&[&table_arn, &format!("{table_arn}/index/*")]),
        ),
        (
            set(&["sqs:SendMessage"]),
            set(&[
                &queue_arn,
                &arn_of("executor").await,
                &arn_of("memory").await,
            ]),
        ),
        (
            set(&["s3:GetObject", "s3:PutObject"]),
            set(&[&format!("arn:aws:s3:::{bucket}/*")]),
        ),
        (set(&["secretsmanager:GetSecretValue"]), set(&[&secret_arn])),
        (
            set(&["logs:CreateLogStream", "logs:PutLogEvents"]),
            set(&[&format!(
                "arn:aws:logs:us-east-1:{account}:log-group:/aws/lambda/{prefix}-api:*"
            )]),
        ),
    ]
    .into_iter()
    .collect();
    let statements = |policy: &Value| -> BTreeSet<(BTreeSet<String>, BTreeSet<String>)> {
        let mut got = BTreeSet::new();
        for st in policy["Statement"].as_array().expect("statements") {
            assert_eq!(st["Effect"], "Allow", "{st}");
            for key in ["NotAction", "NotResource", "Principal", "Condition"] {
                assert!(st.get(key).is_none(), "unexpected {key} in {st}");
            }
            let (actions, resources) = (strings(&st["Action"]), strings(&st["Resource"]));
            for a in &actions {
                assert!(!a.contains('*'), "wildcard action {a}");
            }
            // The one action AWS grants on no resource ARN is the only "*".
            let unscoped = actions.len() == 1 && actions.contains("cloudwatch:GetMetricData");
            for r in &resources {
                assert!(
                    (r == "*" && unscoped) || (r != "*" && r.contains(&prefix)),
                    "resource {r} is not this stack's"
                );
            }
            got.insert((actions, resources));
        }
        got
    };
    // A role: its own queue to consume, the next one to send to, its table
    // actions and the artifact objects, nothing else.
    let observer: Value = serde_json::from_str(
        out("function_policies")["observer"]
            .as_str()
            .expect("observer policy"),
    )
    .expect("json");
    let want_observer: BTreeSet<(BTreeSet<String>, BTreeSet<String>)> = [
        (
            set(&["dynamodb:GetItem", "dynamodb:PutItem"]),
            set(&[&table_arn]),
        ),
        (
            set(&["s3:GetObject", "s3:PutObject"]),
            set(&[&format!("arn:aws:s3:::{bucket}/T/*/artifacts/*")]),
        ),
        (
            set(&[
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            ]),
            set(&[&queue_arn]),
        ),
        (set(&["sqs:SendMessage"]), set(&[&arn_of("analyzer").await])),
        (
            set(&["logs:CreateLogStream", "logs:PutLogEvents"]),
            set(&[&format!(
                "arn:aws:logs:us-east-1:{account}:log-group:/aws/lambda/{prefix}-observer:*"
            )]),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(statements(&observer), want_observer);
    for p in &policies {
        let doc: Value =
            serde_json::from_str(p["values"]["policy"].as_str().expect("policy")).expect("json");
        statements(&doc);
    }
    let got = statements(&policy);
    assert_eq!(got, want);

    // ---- destroy ----------------------------------------------------------------
    applied.destroy();
    assert!(
        ddb.describe_table()
            .table_name(&table)
            .send()
            .await
            .is_err(),
        "table still exists after destroy"
    );
    for name in all_queues
        .iter()
        .flat_map(|q| [format!("{prefix}-{q}"), format!("{prefix}-{q}-dlq")])
    {
        assert!(
            sqs.get_queue_url().queue_name(&name).send().await.is_err(),
            "queue {name} still exists after destroy"
        );
    }
    assert!(
        s3.head_bucket().bucket(&bucket).send().await.is_err(),
        "bucket still exists after destroy"
    );
    assert!(
        secrets
            .describe_secret()
            .secret_id(&secret_id)
            .send()
            .await
            .is_err(),
        "secret still exists after destroy"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The whole module, functions included: the eight packages (the test's own
/// function binaries, zipped as `bin/package` lays them out:
/// `<function>/bootstrap.zip`), the Function URL, seven SQS event source mappings
/// with partial batch failures, log groups with retention and reserved
/// concurrency. moto stores functions without running them; what is asserted is
/// the state Terraform read back from the emulator after the apply. Then destroy
/// leaves nothing.
#[tokio::test]
async fn terraform_applies_the_whole_module_with_packages_and_destroys() {
    let emu = Emulator::shared();
    let prefix = unique_name("tfl");
    let tmp = std::env::temp_dir().join(&prefix);
    copy_tree(&repo().join("infra"), &tmp);
    let packages = tmp.join("packages");
    // The api and the seven roles, by the names the functions' code uses.
    let functions: Vec<&str> = std::iter::once("api")
        .chain(tether_core::incident::artifact::Stage::ALL.map(|s| s.function()))
        .collect();
    for f in functions.iter().copied() {
        let dir = packages.join(f);
        std::fs::create_dir_all(&dir).expect("package dir");
        let zipped = Command::new("python3")
            .args([
                "-c",
                "import sys, zipfile\n\
                 with zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as z:\n\
                 \x20   z.write(sys.argv[1], 'bootstrap')",
            ])
            .arg(tether_e2e::workspace_bin(f))
            .arg(dir.join("bootstrap.zip"))
            .status()
            .expect("python3");
        assert!(zipped.success(), "zipping {f}");
    }
    let applied = Applied::apply(
        emu,
        &prefix,
        &tmp,
        &[
            "-var".to_owned(),
            format!("lambda_artifacts_dir={}", packages.display()),
        ],
    );
    let resources = applied.resources();
    let of = |ty: &str| -> Vec<&Value> { resources.iter().filter(|r| r["type"] == ty).collect() };
    let index = |r: &Value| r["index"].as_str().expect("index").to_owned();

    // ---- functions ----------------------------------------------------------------
    let fns = of("aws_lambda_function");
    assert_eq!(
        fns.iter().map(|r| index(r)).collect::<BTreeSet<_>>(),
        set(&functions),
        "eight functions"
    );
    let env = applied.output("env");
    for r in &fns {
        let (name, v) = (index(r), &r["values"]);
        assert_eq!(v["function_name"], format!("{prefix}-{name}"));
        assert_eq!(v["runtime"], "provided.al2023");
        assert_eq!(v["handler"], "bootstrap");
        assert_eq!(v["architectures"], serde_json::json!(["arm64"]));
        let want_reserved = match name.as_str() {
            "api" => 100,
            "observer" => 5,
            _ => 2,
        };
        assert_eq!(
            v["reserved_concurrent_executions"], want_reserved,
            "{name}: reserved concurrency"
        );
        // Every function gets the environment tether-local gets.
        assert_eq!(v["environment"][0]["variables"], env, "{name}: environment");
    }
    let timeout = |f: &str| {
        fns.iter()
            .find(|r| index(r) == f)
            .map(|r| r["values"]["timeout"].clone())
    };
    assert_eq!(timeout("api"), Some(Value::from(10)));
    assert_eq!(timeout("observer"), Some(Value::from(30)));

    // ---- the Function URL -------------------------------------------------------
    let urls = of("aws_lambda_function_url");
    assert_eq!(urls.len(), 1);
    assert_eq!(urls[0]["values"]["authorization_type"], "NONE");
    assert_eq!(urls[0]["values"]["function_name"], format!("{prefix}-api"));
    let url = urls[0]["values"]["function_url"].as_str().expect("url");
    assert!(url.starts_with("https://"), "{url}");
    assert_eq!(
        applied
            .output("api_url")
            .as_str()
            .map(|u| u.trim_end_matches('/')),
        Some(url.trim_end_matches('/'))
    );

    // ---- event source mappings --------------------------------------------------
    let esms = of("aws_lambda_event_source_mapping");
    assert_eq!(
        esms.iter().map(|r| index(r)).collect::<BTreeSet<_>>(),
        set(&functions[1..]),
        "one mapping per role"
    );
    for r in &esms {
        let (role, v) = (index(r), &r["values"]);
        let queue = if role == "observer" {
            "observations"
        } else {
            role.as_str()
        };
        assert_eq!(
            v["event_source_arn"]
                .as_str()
                .map(|a| a.ends_with(&format!(":{prefix}-{queue}"))),
            Some(true),
            "{role}: {}",
            v["event_source_arn"]
        );
        assert!(
            v["function_arn"]
                .as_str()
                .is_some_and(|a| a.ends_with(&format!(":function:{prefix}-{role}"))),
            "{role}: {}",
            v["function_arn"]
        );
        assert_eq!(v["batch_size"], 10, "{role}");
        assert_eq!(
            v["function_response_types"],
            serde_json::json!(["ReportBatchItemFailures"]),
            "{role}: partial batch failures"
        );
    }

    // ---- log groups ---------------------------------------------------------------
    let groups = of("aws_cloudwatch_log_group");
    assert_eq!(groups.len(), 8);
    for g in &groups {
        assert_eq!(
            g["values"]["name"],
            format!("/aws/lambda/{prefix}-{}", index(g))
        );
        assert_eq!(g["values"]["retention_in_days"], 14);
    }

    // ---- alarms -------------------------------------------------------------------
    let alarms = of("aws_cloudwatch_metric_alarm");
    let dlq_alarms: Vec<&&Value> = alarms
        .iter()
        .filter(|a| a["name"] == "dlq_not_empty")
        .collect();
    assert_eq!(dlq_alarms.len(), 7, "one DLQ alarm per queue");
    for a in &dlq_alarms {
        let v = &a["values"];
        assert_eq!(v["namespace"], "AWS/SQS");
        assert_eq!(v["metric_name"], "ApproximateNumberOfMessagesVisible");
        assert_eq!(
            v["dimensions"]["QueueName"],
            format!("{prefix}-{}-dlq", index(a))
        );
        assert_eq!(v["comparison_operator"], "GreaterThanThreshold");
        assert_eq!(v["threshold"], 0.0);
    }
    let rate_alarms: Vec<&&Value> = alarms
        .iter()
        .filter(|a| a["name"] == "error_rate")
        .collect();
    assert_eq!(
        rate_alarms
            .iter()
            .map(|a| index(a))
            .collect::<BTreeSet<_>>(),
        set(&functions),
        "one error-rate alarm per function"
    );
    for a in &rate_alarms {
        let f = index(a);
        let q = a["values"]["metric_query"]
            .as_array()
            .expect("metric queries");
        let metric = |id: &str| {
            q.iter()
                .find(|m| m["id"] == id)
                .map(|m| m["metric"][0].clone())
                .unwrap_or_default()
        };
        let (errors, total) = if f == "api" {
            ("Errors", "Requests")
        } else {
            ("Failures", "Messages")
        };
        assert_eq!(metric("errors")["metric_name"], errors, "{f}");
        assert_eq!(metric("total")["metric_name"], total, "{f}");
        assert_eq!(metric("errors")["namespace"], "Tether");
        assert_eq!(
            metric("errors")["dimensions"]["function"],
            format!("{prefix}-{f}"),
            "{f}: the function name the EMF lines carry"
        );
    }
    let dir = applied.dir.clone();
    applied.destroy();
    assert_eq!(
        terraform(&dir, &["state", "list", "-no-color"]).trim(),
        "",
        "destroy leaves nothing in the state"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `infra/README.md`'s variable table names exactly the variables of
/// `infra/variables.tf`.
#[test]
fn the_readme_documents_every_variable() {
    let tf = std::fs::read_to_string(repo().join("infra/variables.tf")).expect("variables.tf");
    let declared: BTreeSet<String> = tf
        .lines()
        .filter_map(|l| l.strip_prefix("variable \""))
        .filter_map(|l| l.split('"').next())
        .map(str::to_owned)
        .collect();
    let readme = std::fs::read_to_string(repo().join("infra/README.md")).expect("README");
    let table = readme
        .split("## Variables")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Variables section");
    let documented: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split(" |").next())
        .flat_map(|cell| {
            cell.split(", ")
                .map(|n| n.trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(documented, declared);
}

/// checkov (`TETHER_CHECKOV`, installed by bin/test from
/// `infra/requirements-checkov.txt`) on `infra/`: no failed check but those
/// skipped in `infra/.checkov.yaml`, each skip with its reason, and no skip
/// that would pass anyway (the list is exactly what checkov objects to).
#[test]
fn checkov_is_clean_apart_from_the_listed_skips() {
    let checkov = std::env::var("TETHER_CHECKOV").unwrap_or_else(|_| {
        repo()
            .join(".tether/checkov-venv/bin/checkov")
            .to_string_lossy()
            .into_owned()
    });
    assert!(
        Path::new(&checkov).is_file(),
        "{checkov} is missing: bin/test installs it (infra/requirements-checkov.txt)"
    );
    // checkov reads a `.checkov.yaml` in the scanned directory by itself: the
    // bare scan runs on a copy without it.
    let bare_dir = std::env::temp_dir().join(unique_name("checkov"));
    copy_tree(&repo().join("infra"), &bare_dir);
    std::fs::remove_file(bare_dir.join(".checkov.yaml")).expect("copied config");
    let scan = |config: Option<&Path>| -> Value {
        let mut cmd = Command::new(&checkov);
        cmd.args(["--quiet", "--compact", "-o", "json"]);
        match config {
            Some(c) => cmd
                .arg("-d")
                .arg(repo().join("infra"))
                .arg("--config-file")
                .arg(c),
            None => cmd
                .arg("-d")
                .arg(&bare_dir)
                .args(["--framework", "terraform"]),
        };
        let out = cmd.output().expect("checkov runs");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "checkov printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        match v {
            Value::Array(mut a) if !a.is_empty() => a.swap_remove(0),
            other => other,
        }
    };
    let config = repo().join("infra/.checkov.yaml");
    let text = std::fs::read_to_string(&config).expect(".checkov.yaml");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut skipped = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(id) = l.strip_prefix("- CKV") {
            let id = format!("CKV{id}");
            let why = lines.get(i + 1).and_then(|n| n.strip_prefix("# why: "));
            assert!(
                why.is_some_and(|w| w.len() > 20),
                "{id} is skipped without a reason on the next line"
            );
            skipped.insert(id);
        }
    }

    let with_skips = scan(Some(&config));
    assert_eq!(
        with_skips["summary"]["parsing_errors"], 0,
        "{}",
        with_skips["summary"]
    );
    assert_eq!(
        with_skips["summary"]["failed"], 0,
        "checkov failures not listed in infra/.checkov.yaml: {}",
        with_skips["results"]["failed_checks"]
    );
    assert!(with_skips["summary"]["passed"]
        .as_u64()
        .is_some_and(|n| n > 50));

    let bare = scan(None);
    let objections: BTreeSet<String> = bare["results"]["failed_checks"]
        .as_array()
        .expect("failed checks")
        .iter()
        .map(|c| c["check_id"].as_str().expect("check id").to_owned())
        .collect();
    assert_eq!(
        skipped, objections,
        "the skip list must be exactly what checkov objects to"
    );
    let _ = std::fs::remove_dir_all(&bare_dir);
}

/// What each role's code may send (`Stage::sends_to`, which the role unit tests
/// hold every send to) is exactly the `sends` of its IAM grant in `infra/iam.tf`.
#[test]
fn each_roles_iam_grant_sends_where_its_code_sends() {
    use tether_core::incident::artifact::Stage;
    let tf = std::fs::read_to_string(repo().join("infra/iam.tf")).expect("iam.tf");
    for stage in Stage::ALL {
        let function = stage.function();
        let line = tf
            .lines()
            .map(str::trim)
            .find(|l| {
                l.starts_with(&format!("{function} ")) || l.starts_with(&format!("\"{function}\" "))
            })
            .unwrap_or_else(|| panic!("no role_access entry for {function} in infra/iam.tf"));
        let sends = line
            .split("sends = [")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .unwrap_or_else(|| panic!("{function}: no sends list in {line}"));
        let granted: BTreeSet<String> = sends
            .split(',')
            .map(|q| q.trim().trim_matches('"').to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        let code: BTreeSet<String> = stage
            .sends_to()
            .iter()
            .map(|s| s.queue().to_owned())
            .collect();
        assert_eq!(granted, code, "{function}: IAM sends vs Stage::sends_to");
        let consumes = format!("consumes = \"{}\"", stage.queue());
        assert!(
            line.contains(&consumes),
            "{function} consumes {}: {line}",
            stage.queue()
        );
    }
}
