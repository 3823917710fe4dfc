//! DynamoDB: one table, keys from `tether_core::key`, item shapes private here.
//!
//! Item layout (attributes beyond `pk`/`sk`):
//! - agent (`0#agent`): `version`, `revoked`, `cred_gen` (top-level, so conditions and
//!   revocation can use them), `gsi1pk`/`gsi1sk` (tenant's agent index), `body` (JSON).
//! - outbox (`1#out#<id>`) and history (`9#done#<id>`): `state`, `agent_id`, `ttl`,
//!   `gsi1pk`/`gsi1sk` (tenant's action index, by creation time), `body`.
//! - services (`2#svc`): `agent_id`, `gsi1pk`/`gsi1sk`, `body`.
//! - desired (`T#<t>#DESIRED`): `rev` item with `revision`; `w#<key>` items with
//!   `changed_at` and `body`.
//! - enrollment tokens and API keys: plain attributes, secrets only as hashes.
//!
//! Invariants: every create is `attribute_not_exists(pk)`; agent writes are
//! conditional on `version`; outbox changes are conditional on `state`; the poll's
//! read is one strongly consistent Query and its write one TransactWriteItems. Items
//! that do not parse are reported as [`StoreError::Corrupt`], never skipped.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tether_core::key::{self, Key};
use tether_core::model::{
    AgentRecord, AgentView, ApiKeyRecord, Attempt, DesiredEntry, DesiredSet, DoneItem,
    EnrollmentTokenRecord, FinalState, LiveState, OutboxItem, ServicesRecord,
};
use tether_core::port::{
    ActionEntry, AgentStore, CredentialStore, DesiredStore, FleetQuery, PollCommit, StoreError,
    Transition,
};
use tether_core::tenant::{AgentId, Role, TenantId};
use tether_proto::operator::DesiredWorkload;
use tether_proto::{Action, ActionResult, Inventory, Service};

pub(crate) type Item = HashMap<String, AttributeValue>;

/// History items live this long after an action finishes.
const DONE_RETENTION_S: u64 = 30 * 24 * 3600;
/// Outbox items outlive their `expires_at` by this much, so expiry stays visible.
const OUTBOX_GRACE_S: u64 = 7 * 24 * 3600;
/// Operator listings read at most this many pages.
const MAX_LIST_PAGES: usize = 20;

#[derive(Debug, Clone)]
pub struct DynamoStore {
    pub(crate) client: Client,
    pub(crate) table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }
}

// ---------- attribute helpers ----------

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn keyed(k: &Key) -> Item {
    HashMap::from([("pk".to_owned(), s(&k.pk)), ("sk".to_owned(), s(&k.sk))])
}

pub(crate) fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing or not a string")))
}

pub(crate) fn get_n(item: &Item, name: &str) -> Result<u64, StoreError> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("attribute {name} missing or not a number")))
}

fn get_bool(item: &Item, name: &str) -> bool {
    item.get(name)
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}

pub(crate) fn body<T: for<'de> Deserialize<'de>>(item: &Item) -> Result<T, StoreError> {
    serde_json::from_str(get_s(item, "body")?)
        .map_err(|e| StoreError::Corrupt(format!("body: {e}")))
}

pub(crate) fn to_body<T: Serialize>(v: &T) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(v)
        .map(s)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn map_err<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = e.code().unwrap_or_default().to_owned();
    match code.as_str() {
        "ConditionalCheckFailedException"
        | "TransactionCanceledException"
        | "TransactionConflictException" => StoreError::Conflict,
        "ProvisionedThroughputExceededException"
        | "ThrottlingException"
        | "RequestLimitExceeded" => StoreError::Throttled,
        _ => StoreError::Unavailable(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()),
    }
}

use aws_sdk_dynamodb::error::ProvideErrorMetadata;

pub(crate) fn epoch_s(ms: u64) -> u64 {
    ms / 1000
}

// ---------- private item shapes ----------

#[derive(Serialize, Deserialize)]
struct AttemptDoc {
    pid: u32,
    revision: u64,
    count: u32,
    #[serde(default)]
    exhausted: bool,
    #[serde(default)]
    succeeded_at_hash: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct AgentDoc {
    hostname: String,
    agent_version: String,
    enrolled_at_ms: u64,
    last_seen_ms: u64,
    poll_interval_ms: u64,
    capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action_kinds: Option<Vec<String>>,
    inventory_hash: String,
    inventory: Option<Inventory>,
    services_hash: String,
    reconciled_revision: u64,
    applied_revision: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    drift: Vec<tether_proto::operator::Drift>,
    spool_depth: u64,
    last_error: Option<String>,
    attempts: BTreeMap<String, AttemptDoc>,
    #[serde(default)]
    reconcile_pending: bool,
    #[serde(default)]
    collectors: Vec<tether_proto::CollectorState>,
    #[serde(default)]
    vitals: BTreeMap<String, f64>,
}

fn agent_item(t: &TenantId, a: &AgentRecord) -> Result<Item, StoreError> {
    let doc = AgentDoc {
        hostname: a.hostname.clone(),
        agent_version: a.agent_version.clone(),
        enrolled_at_ms: a.enrolled_at_ms,
        last_seen_ms: a.last_seen_ms,
        poll_interval_ms: a.poll_interval_ms,
        capabilities: a.capabilities.clone(),
        action_kinds: a.action_kinds.clone(),
        inventory_hash: a.inventory_hash.clone(),
        inventory: a.inventory.clone(),
        services_hash: a.services_hash.clone(),
        reconciled_revision: a.reconciled_revision,
        applied_revision: a.applied_revision,
        drift: a.drift.clone(),
        spool_depth: a.spool_depth,
        last_error: a.last_error.clone(),
        attempts: a
            .attempts
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    AttemptDoc {
                        pid: v.pid,
                        revision: v.revision,
                        count: v.count,
                        exhausted: v.exhausted,
                        succeeded_at_hash: v.succeeded_at_hash.clone(),
                    },
                )
            })
            .collect(),
        reconcile_pending: a.reconcile_pending,
        collectors: a.collectors.clone(),
        vitals: a.vitals.clone(),
    };
    let mut item = keyed(&key::agent(t, &a.agent_id));
    item.insert("version".into(), n(a.version));
    item.insert("revoked".into(), AttributeValue::Bool(a.revoked));
    item.insert("cred_gen".into(), n(u64::from(a.credential_gen)));
    item.insert("gsi1pk".into(), s(key::index::agents(t)));
    item.insert("gsi1sk".into(), s(a.agent_id.as_str()));
    item.insert("body".into(), to_body(&doc)?);
    Ok(item)
}

pub(crate) fn agent_from(item: &Item) -> Result<AgentRecord, StoreError> {
    let doc: AgentDoc = body(item)?;
    let agent_id =
        AgentId::parse(get_s(item, "gsi1sk")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(AgentRecord {
        agent_id,
        hostname: doc.hostname,
        agent_version: doc.agent_version,
        enrolled_at_ms: doc.enrolled_at_ms,
        last_seen_ms: doc.last_seen_ms,
        poll_interval_ms: doc.poll_interval_ms,
        revoked: get_bool(item, "revoked"),
        credential_gen: u32::try_from(get_n(item, "cred_gen")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        capabilities: doc.capabilities,
        action_kinds: doc.action_kinds,
        inventory_hash: doc.inventory_hash,
        inventory: doc.inventory,
        services_hash: doc.services_hash,
        reconciled_revision: doc.reconciled_revision,
        applied_revision: doc.applied_revision,
        drift: doc.drift,
        spool_depth: doc.spool_depth,
        last_error: doc.last_error,
        attempts: doc
            .attempts
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    Attempt {
                        pid: v.pid,
                        revision: v.revision,
                        count: v.count,
                        exhausted: v.exhausted,
                        succeeded_at_hash: v.succeeded_at_hash,
                    },
                )
            })
            .collect(),
        reconcile_pending: doc.reconcile_pending,
        collectors: doc.collectors,
        vitals: doc.vitals,
        version: get_n(item, "version")?,
    })
}

#[derive(Serialize, Deserialize)]
struct OutboxDoc {
    action: Action,
    attempt: u32,
    pid: u32,
    created_at_ms: u64,
    updated_at_ms: u64,
    last_result: Option<ActionResult>,
    #[serde(default)]
    result: Option<ActionResult>,
    #[serde(default)]
    finished_at_ms: u64,
}

fn outbox_doc(o: &OutboxItem) -> OutboxDoc {
    OutboxDoc {
        action: o.action.clone(),
        attempt: o.attempt,
        pid: o.pid,
        created_at_ms: o.created_at_ms,
        updated_at_ms: o.updated_at_ms,
        last_result: o.last_result.clone(),
        result: None,
        finished_at_ms: 0,
    }
}

fn action_index(t: &TenantId, item: &mut Item, o: &OutboxItem, agent: &AgentId) {
    item.insert("gsi1pk".into(), s(key::index::actions(t)));
    item.insert(
        "gsi1sk".into(),
        s(key::index::action_sort(o.created_at_ms, &o.action.id)),
    );
    item.insert("agent_id".into(), s(agent.as_str()));
}

pub(crate) fn outbox_item(
    t: &TenantId,
    agent: &AgentId,
    o: &OutboxItem,
) -> Result<Item, StoreError> {
    let mut item = keyed(&key::outbox(t, agent, &o.action.id));
    item.insert("state".into(), s(o.state.as_str()));
    item.insert(
        "ttl".into(),
        n(epoch_s(o.action.expires_at_ms) + OUTBOX_GRACE_S),
    );
    action_index(t, &mut item, o, agent);
    item.insert("body".into(), to_body(&outbox_doc(o))?);
    Ok(item)
}

fn done_item(t: &TenantId, agent: &AgentId, d: &DoneItem) -> Result<Item, StoreError> {
    let mut doc = outbox_doc(&d.item);
    doc.result = d.result.clone();
    doc.finished_at_ms = d.finished_at_ms;
    let mut item = keyed(&key::done(t, agent, &d.item.action.id));
    item.insert("state".into(), s(d.state.as_str()));
    item.insert(
        "ttl".into(),
        n(epoch_s(d.finished_at_ms) + DONE_RETENTION_S),
    );
    action_index(t, &mut item, &d.item, agent);
    item.insert("body".into(), to_body(&doc)?);
    Ok(item)
}

fn outbox_from(item: &Item, state: LiveState) -> Result<OutboxItem, StoreError> {
    let doc: OutboxDoc = body(item)?;
    Ok(OutboxItem {
        action: doc.action,
        state,
        attempt: doc.attempt,
        pid: doc.pid,
        created_at_ms: doc.created_at_ms,
        updated_at_ms: doc.updated_at_ms,
        last_result: doc.last_result,
    })
}

pub(crate) fn action_entry_from(item: &Item) -> Result<ActionEntry, StoreError> {
    let state = get_s(item, "state")?;
    let agent =
        AgentId::parse(get_s(item, "agent_id")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Some(live) = LiveState::parse(state) {
        return Ok(ActionEntry::Live(agent, outbox_from(item, live)?));
    }
    let fin = FinalState::parse(state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown action state {state}")))?;
    let doc: OutboxDoc = body(item)?;
    Ok(ActionEntry::Done(
        agent,
        DoneItem {
            finished_at_ms: doc.finished_at_ms,
            result: doc.result.clone(),
            state: fin,
            item: OutboxItem {
                action: doc.action,
                state: LiveState::Started,
                attempt: doc.attempt,
                pid: doc.pid,
                created_at_ms: doc.created_at_ms,
                updated_at_ms: doc.updated_at_ms,
                last_result: doc.last_result,
            },
        },
    ))
}

#[derive(Serialize, Deserialize)]
struct ServicesDoc {
    hash: String,
    services: Vec<Service>,
    updated_at_ms: u64,
}

fn services_item(t: &TenantId, agent: &AgentId, r: &ServicesRecord) -> Result<Item, StoreError> {
    let mut item = keyed(&key::services(t, agent));
    item.insert("gsi1pk".into(), s(key::index::services(t)));
    item.insert("gsi1sk".into(), s(agent.as_str()));
    item.insert("agent_id".into(), s(agent.as_str()));
    item.insert(
        "body".into(),
        to_body(&ServicesDoc {
            hash: r.hash.clone(),
            services: r.services.clone(),
            updated_at_ms: r.updated_at_ms,
        })?,
    );
    Ok(item)
}

fn services_from(item: &Item) -> Result<ServicesRecord, StoreError> {
    let doc: ServicesDoc = body(item)?;
    Ok(ServicesRecord {
        hash: doc.hash,
        services: doc.services,
        updated_at_ms: doc.updated_at_ms,
    })
}

/// A condition on a write: expression, attribute names, attribute values.
struct Cond<'a> {
    expr: &'a str,
    names: &'a [(&'a str, &'a str)],
    values: Vec<(&'a str, AttributeValue)>,
}

const ABSENT: Cond<'static> = Cond {
    expr: "attribute_not_exists(pk)",
    names: &[],
    values: Vec::new(),
};

fn state_is(from: LiveState) -> Cond<'static> {
    Cond {
        expr: "#st = :from",
        names: &[("#st", "state")],
        values: vec![(":from", s(from.as_str()))],
    }
}

fn put(table: &str, item: Item, cond: Option<Cond<'_>>) -> Result<TransactWriteItem, StoreError> {
    let mut b = Put::builder().table_name(table).set_item(Some(item));
    if let Some(c) = cond {
        b = b.condition_expression(c.expr);
        for (k, v) in c.names {
            b = b.expression_attribute_names(*k, *v);
        }
        for (k, v) in c.values {
            b = b.expression_attribute_values(k, v);
        }
    }
    Ok(TransactWriteItem::builder()
        .put(b.build().map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .build())
}

pub(crate) fn key_map(k: &Key) -> Item {
    keyed(k)
}

impl DynamoStore {
    async fn query_all(
        &self,
        index: Option<&str>,
        pk_name: &str,
        pk: &str,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        for _ in 0..MAX_LIST_PAGES {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#p = :p")
                .expression_attribute_names("#p", pk_name)
                .expression_attribute_values(":p", s(pk))
                .set_exclusive_start_key(start.take());
            q = match index {
                Some(i) => q.index_name(i),
                None => q.consistent_read(true),
            };
            let out = q.send().await.map_err(map_err)?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(items)
    }

    /// One item by key, strongly consistent.
    pub(crate) async fn get(&self, k: &Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_map(k)))
            .consistent_read(true)
            .send()
            .await
            .map_err(map_err)?;
        Ok(out.item)
    }

    /// Applies `update` to an existing item; `Ok(false)` when there is none.
    async fn update_if_exists(
        &self,
        k: &Key,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, StoreError> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_map(k)))
            .update_expression(update)
            .condition_expression("attribute_exists(pk)")
            .set_expression_attribute_values(Some(
                values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn mark_revoked(&self, k: &Key) -> Result<bool, StoreError> {
        self.update_if_exists(
            k,
            "SET revoked = :t",
            vec![(":t", AttributeValue::Bool(true))],
        )
        .await
    }
}

impl AgentStore for DynamoStore {
    async fn load_view(&self, t: &TenantId, a: &AgentId) -> Result<Option<AgentView>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("pk = :p AND sk BETWEEN :a AND :b")
            .expression_attribute_values(":p", s(key::agent_partition(t, a)))
            .expression_attribute_values(":a", s(key::POLL_RANGE_START))
            .expression_attribute_values(":b", s(key::POLL_RANGE_END))
            .send()
            .await
            .map_err(map_err)?;
        let mut agent = None;
        let mut outbox = Vec::new();
        let mut services = None;
        for item in out.items.unwrap_or_default() {
            let sk = get_s(&item, "sk")?;
            if sk == key::AGENT_SK {
                agent = Some(agent_from(&item)?);
            } else if sk == key::SERVICES_SK {
                services = Some(services_from(&item)?);
            } else if sk.starts_with(key::OUTBOX_PREFIX) {
                let state = get_s(&item, "state")?;
                let live = LiveState::parse(state)
                    .ok_or_else(|| StoreError::Corrupt(format!("outbox item in state {state}")))?;
                outbox.push(outbox_from(&item, live)?);
            }
        }
        Ok(agent.map(|agent| AgentView {
            agent,
            outbox,
            services,
        }))
    }

    async fn commit_poll(&self, t: &TenantId, c: &PollCommit) -> Result<(), StoreError> {
        let table = self.table.as_str();
        let aid = &c.agent.agent_id;
        let mut items = Vec::with_capacity(c.item_count());
        let agent_cond = if c.expected_version == 0 {
            ABSENT
        } else {
            Cond {
                expr: "version = :v",
                names: &[],
                values: vec![(":v", n(c.expected_version))],
            }
        };
        items.push(put(table, agent_item(t, &c.agent)?, Some(agent_cond))?);
        if let Some(svc) = &c.services {
            items.push(put(table, services_item(t, aid, svc)?, None)?);
        }
        for o in &c.enqueue {
            items.push(put(table, outbox_item(t, aid, o)?, Some(ABSENT))?);
        }
        for tr in &c.transitions {
            match tr {
                Transition::Advance { item, from } => items.push(put(
                    table,
                    outbox_item(t, aid, item)?,
                    Some(state_is(*from)),
                )?),
                Transition::Finish { done, from } => {
                    let del = Delete::builder()
                        .table_name(table)
                        .set_key(Some(key_map(&key::outbox(t, aid, &done.item.action.id))))
                        .condition_expression("#st = :from")
                        .expression_attribute_names("#st", "state")
                        .expression_attribute_values(":from", s(from.as_str()))
                        .build()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    items.push(TransactWriteItem::builder().delete(del).build());
                    items.push(put(table, done_item(t, aid, done)?, Some(ABSENT))?);
                }
            }
        }
        if items.len() > 100 {
            return Err(StoreError::Corrupt(format!(
                "poll commit of {} items exceeds 100",
                items.len()
            )));
        }
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn enroll(
        &self,
        t: &TenantId,
        token_id: &str,
        agent: &AgentRecord,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let use_token = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_map(&key::enrollment_token(t, token_id))))
            .update_expression("SET uses = uses + :one")
            .condition_expression("revoked = :f AND uses < max_uses AND expires_at_ms > :now")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":now", n(now_ms))
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let create = put(&self.table, agent_item(t, agent)?, Some(ABSENT))?;
        self.client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(use_token).build())
            .transact_items(create)
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn revoke_agent(&self, t: &TenantId, a: &AgentId) -> Result<bool, StoreError> {
        self.update_if_exists(
            &key::agent(t, a),
            "SET revoked = :t, cred_gen = cred_gen + :one, version = version + :one",
            vec![(":t", AttributeValue::Bool(true)), (":one", n(1))],
        )
        .await
    }
}

#[derive(Serialize, Deserialize)]
struct DesiredDoc {
    workload: DesiredWorkload,
}

impl DesiredStore for DynamoStore {
    async fn load_desired(&self, t: &TenantId) -> Result<DesiredSet, StoreError> {
        let mut set = DesiredSet::default();
        for item in self
            .query_all(None, "pk", &key::desired_partition(t))
            .await?
        {
            let sk = get_s(&item, "sk")?;
            if sk == key::DESIRED_REVISION_SK {
                set.revision = get_n(&item, "revision")?;
            } else if sk.starts_with(key::DESIRED_WORKLOAD_PREFIX) {
                let doc: DesiredDoc = body(&item)?;
                set.workloads.insert(
                    doc.workload.workload_key.clone(),
                    DesiredEntry {
                        workload: doc.workload,
                        changed_at_revision: get_n(&item, "changed_at")?,
                    },
                );
            }
        }
        Ok(set)
    }

    async fn apply_desired(
        &self,
        t: &TenantId,
        changed: &[DesiredWorkload],
        expected_revision: u64,
        new_revision: u64,
    ) -> Result<(), StoreError> {
        if changed.len() > 99 {
            return Err(StoreError::Corrupt(
                "at most 99 workloads change per apply".into(),
            ));
        }
        let mut rev = keyed(&key::desired_revision(t));
        rev.insert("revision".into(), n(new_revision));
        let cond = if expected_revision == 0 {
            ABSENT
        } else {
            Cond {
                expr: "revision = :r",
                names: &[],
                values: vec![(":r", n(expected_revision))],
            }
        };
        let mut items = vec![put(&self.table, rev, Some(cond))?];
        for w in changed {
            let mut item = keyed(&key::desired_workload(t, &w.workload_key));
            item.insert("changed_at".into(), n(new_revision));
            item.insert(
                "body".into(),
                to_body(&DesiredDoc {
                    workload: w.clone(),
                })?,
            );
            items.push(put(&self.table, item, None)?);
        }
        self.client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }
}

fn token_from(item: &Item) -> Result<EnrollmentTokenRecord, StoreError> {
    Ok(EnrollmentTokenRecord {
        id: get_s(item, "sk")?.to_owned(),
        secret_hash: get_s(item, "secret_hash")?.to_owned(),
        description: get_s(item, "description")?.to_owned(),
        created_at_ms: get_n(item, "created_at_ms")?,
        expires_at_ms: get_n(item, "expires_at_ms")?,
        max_uses: u32::try_from(get_n(item, "max_uses")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        uses: u32::try_from(get_n(item, "uses")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        revoked: get_bool(item, "revoked"),
    })
}

fn api_key_from(item: &Item) -> Result<ApiKeyRecord, StoreError> {
    let role = get_s(item, "role")?;
    Ok(ApiKeyRecord {
        id: get_s(item, "sk")?.to_owned(),
        secret_hash: get_s(item, "secret_hash")?.to_owned(),
        role: Role::parse(role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown role {role}")))?,
        description: get_s(item, "description")?.to_owned(),
        created_at_ms: get_n(item, "created_at_ms")?,
        revoked: get_bool(item, "revoked"),
    })
}

impl CredentialStore for DynamoStore {
    async fn put_enrollment_token(
        &self,
        t: &TenantId,
        r: &EnrollmentTokenRecord,
    ) -> Result<(), StoreError> {
        let mut item = keyed(&key::enrollment_token(t, &r.id));
        item.insert("secret_hash".into(), s(&r.secret_hash));
        item.insert("description".into(), s(&r.description));
        item.insert("created_at_ms".into(), n(r.created_at_ms));
        item.insert("expires_at_ms".into(), n(r.expires_at_ms));
        item.insert("max_uses".into(), n(u64::from(r.max_uses)));
        item.insert("uses".into(), n(u64::from(r.uses)));
        item.insert("revoked".into(), AttributeValue::Bool(r.revoked));
        item.insert("ttl".into(), n(epoch_s(r.expires_at_ms) + OUTBOX_GRACE_S));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get_enrollment_token(
        &self,
        t: &TenantId,
        id: &str,
    ) -> Result<Option<EnrollmentTokenRecord>, StoreError> {
        self.get(&key::enrollment_token(t, id))
            .await?
            .as_ref()
            .map(token_from)
            .transpose()
    }

    async fn list_enrollment_tokens(
        &self,
        t: &TenantId,
    ) -> Result<Vec<EnrollmentTokenRecord>, StoreError> {
        let pk = key::enrollment_token(t, "").pk;
        self.query_all(None, "pk", &pk)
            .await?
            .iter()
            .map(token_from)
            .collect()
    }

    async fn revoke_enrollment_token(&self, t: &TenantId, id: &str) -> Result<bool, StoreError> {
        self.mark_revoked(&key::enrollment_token(t, id)).await
    }

    async fn put_api_key(&self, t: &TenantId, r: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut item = keyed(&key::api_key(t, &r.id));
        item.insert("secret_hash".into(), s(&r.secret_hash));
        item.insert("role".into(), s(r.role.as_str()));
        item.insert("description".into(), s(&r.description));
        item.insert("created_at_ms".into(), n(r.created_at_ms));
        item.insert("revoked".into(), AttributeValue::Bool(r.revoked));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn get_api_key(
        &self,
        t: &TenantId,
        id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.get(&key::api_key(t, id))
            .await?
            .as_ref()
            .map(api_key_from)
            .transpose()
    }

    async fn list_api_keys(&self, t: &TenantId) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let pk = key::api_key(t, "").pk;
        self.query_all(None, "pk", &pk)
            .await?
            .iter()
            .map(api_key_from)
            .collect()
    }

    async fn revoke_api_key(&self, t: &TenantId, id: &str) -> Result<bool, StoreError> {
        self.mark_revoked(&key::api_key(t, id)).await
    }
}

impl FleetQuery for DynamoStore {
    async fn list_agents(&self, t: &TenantId) -> Result<Vec<AgentRecord>, StoreError> {
        self.query_all(Some("gsi1"), "gsi1pk", &key::index::agents(t))
            .await?
            .iter()
            .map(agent_from)
            .collect()
    }

    async fn list_services(
        &self,
        t: &TenantId,
    ) -> Result<Vec<(AgentId, ServicesRecord)>, StoreError> {
        self.query_all(Some("gsi1"), "gsi1pk", &key::index::services(t))
            .await?
            .iter()
            .map(|item| {
                let a = AgentId::parse(get_s(item, "agent_id")?)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok((a, services_from(item)?))
            })
            .collect()
    }

    async fn list_actions(&self, t: &TenantId) -> Result<Vec<ActionEntry>, StoreError> {
        self.query_all(Some("gsi1"), "gsi1pk", &key::index::actions(t))
            .await?
            .iter()
            .map(action_entry_from)
            .collect()
    }
}
