//! The observer: telemetry windows in, runs opened on a signal's rising edge, with the host's state stored, not held.

use super::*;

impl<
        S: Runs + HostMarkers + EvidenceLog + AuditTrail,
        A: ArtifactStore,
        Q: StageQueue,
        C: Clock,
    > Chain<S, A, Q, C>
{
    /// The observer: the host's stored state and markers are read once, every
    /// window of the message is evaluated against them, and the result is written
    /// back in one conditional write before any run opens. A lost race (another
    /// instance wrote the same host meanwhile) re-reads and re-evaluates, so no
    /// result depends on which instance a message lands on.
    pub async fn observe(&self, msg: &ObservationMessage) -> Result<Vec<String>, RoleError> {
        let t = TenantId::parse(&msg.tenant).map_err(|e| perm(e.to_string()))?;
        let a = AgentId::parse(&msg.agent_id).map_err(|e| perm(e.to_string()))?;
        let mut windows = msg.windows.clone();
        windows.sort_by_key(|w| w.seq);
        let mut attempt = 0;
        let (markers, openings) = loop {
            let stored = self.store.load_markers(&t, &a).await?;
            let mut markers = stored.clone();
            let openings = self.evaluate_windows(&t, &a, &mut markers, &windows);
            if markers == stored {
                break (markers, openings);
            }
            match self.store.save_markers(&t, &a, &markers).await {
                Ok(()) => {
                    markers.version += 1;
                    break (markers, openings);
                }
                Err(StoreError::Conflict) if attempt < 4 => attempt += 1,
                Err(StoreError::Conflict) => {
                    return Err(RoleError::Transient(
                        "incident markers changed concurrently".into(),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Evidence for the agent's open runs.
        for w in &windows {
            for entry in markers.families.values() {
                if w.end_ms > entry.collect_until_ms {
                    continue;
                }
                let metrics: BTreeMap<String, f64> = entry
                    .metrics
                    .iter()
                    .filter_map(|k| {
                        w.metrics
                            .get(k)
                            .filter(|v| v.is_finite())
                            .map(|v| (k.clone(), *v))
                    })
                    .collect();
                if !metrics.is_empty() {
                    self.store
                        .put_evidence(
                            &t,
                            &entry.run_id,
                            &EvidencePoint {
                                seq: w.seq,
                                start_ms: w.start_ms,
                                end_ms: w.end_ms,
                                metrics,
                            },
                        )
                        .await?;
                }
            }
        }
        let mut opened = Vec::new();
        for o in openings {
            let Opening {
                window: w,
                signal: s,
                history,
                run,
                redelivered,
            } = o;
            let now = self.clock.now_ms();
            let window_ref = format!("window:{a}:{}", w.seq);
            let excerpt = format!(
                "{} = {:.1} over [{}, {}] (threshold {:.1})",
                s.metric, s.value, w.start_ms, w.end_ms, s.threshold
            );
            let mut m = RunManifest {
                run_id: run.clone(),
                incident_id: format!("inc_{}", run.trim_start_matches("run_")),
                agent_id: a.to_string(),
                family: s.family.clone(),
                title: s.family.replace('_', " "),
                status: RunStatus::Open,
                outcome: String::new(),
                created_at_ms: w.end_ms,
                updated_at_ms: now,
                chain: vec![],
                approval: None,
                approval_expires_at_ms: None,
                actions: vec![],
                failure: None,
                fingerprint: String::new(),
                version: 0,
            };
            let art = envelope(
                Stage::Observer,
                Some(Stage::Analyzer),
                &m,
                &t,
                w.end_ms,
                "open",
                vec![],
                vec![EvidenceRef::new(window_ref, [excerpt])],
                Body::ObservationSummary {
                    agent_id: a.to_string(),
                    window_seq: w.seq,
                    window_start_ms: w.start_ms,
                    window_end_ms: w.end_ms,
                    signals: vec![s.clone()],
                    history,
                },
            );
            if redelivered {
                // Opened by an earlier delivery of this window: make sure the
                // analyzer heard of the run's own observation.
                if let Some(existing) = self.store.load_run(&t, &run).await? {
                    if let Some(l) = existing.link(ArtifactKind::ObservationSummary) {
                        let id = l.id.clone();
                        self.next(Stage::Analyzer, &t, &run, &id).await?;
                        continue;
                    }
                }
            }
            let id = self.artifacts.put(&t, &art).await?;
            m.append(Stage::Observer, &art, &id);
            self.store.create_run(&t, &m).await?;
            self.store
                .put_evidence(
                    &t,
                    &run,
                    &EvidencePoint {
                        seq: w.seq,
                        start_ms: w.start_ms,
                        end_ms: w.end_ms,
                        metrics: BTreeMap::from([(s.metric.clone(), s.value)]),
                    },
                )
                .await?;
            self.next(Stage::Analyzer, &t, &run, &id).await?;
            tracing::info!(run = %run, family = %s.family, agent = %a, "run opened");
            opened.push(run);
        }
        Ok(opened)
    }

    /// The pure half of [`Self::observe`]: feeds the windows to the host's
    /// state, claims in `markers` the families of the runs to open, and returns
    /// those runs. A signal whose family an open run owns is suppressed; a window
    /// delivered again yields the same runs, marked `redelivered`.
    pub(super) fn evaluate_windows(
        &self,
        t: &TenantId,
        a: &AgentId,
        markers: &mut Markers,
        windows: &[TelemetryWindow],
    ) -> Vec<Opening> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        for w in windows {
            let rising = markers
                .host
                .observe(&self.cfg.thresholds, self.cfg.history, w);
            for s in rising.signals {
                let run = run_id(t, a.as_str(), &s.family, w.seq);
                if let Some(m) = markers.families.get(&s.family) {
                    if m.run_id != run && m.suppress_until_ms > now {
                        tracing::info!(run = %m.run_id, family = %s.family, "signal already has an open run");
                        continue;
                    }
                }
                let redelivered = markers
                    .families
                    .get(&s.family)
                    .is_some_and(|m| m.run_id == run);
                if !redelivered {
                    markers.families.insert(
                        s.family.clone(),
                        MarkerEntry {
                            run_id: run.clone(),
                            suppress_until_ms: now + self.cfg.suppress_ms,
                            collect_until_ms: w.end_ms + self.cfg.collect_ms,
                            metrics: vec![s.metric.clone()],
                        },
                    );
                }
                let mut history = rising.history.clone();
                history.retain(|k, _| *k == s.metric);
                out.push(Opening {
                    window: w.clone(),
                    signal: s,
                    history,
                    run,
                    redelivered,
                });
            }
        }
        out
    }
}
