//! The `feedback` projection: the operator surface's triage queue. One `read_models.feedback` row
//! per submission (its view, with every workflow move) and `feedback_groups`, the groups that are
//! triaged together, with their counts per workflow state.
//!
//! Grouping, decided here in log order (so a rebuild groups exactly as the live run did), for each
//! new submission in turn:
//! 1. a duplicate (the same fingerprint as an earlier submission) joins that submission's group;
//! 2. otherwise, if its source has a burst group that grew within the burst window, it joins it;
//! 3. otherwise, if its source sent [`BurstRule::count`] submissions within the window counting
//!    this one, they form a new burst group: the earlier ones that were alone in their groups move
//!    into it;
//! 4. otherwise it starts a group of its own.
//!
//! A source is the submitting user for reports and the client address for probes. A group's state is
//! the least advanced state of its items, so a new duplicate of archived items reopens their group.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use contracts::read_models::{feedback_count, FEEDBACK, FEEDBACK_ALL};
use contracts::views::{FeedbackItem, TransitionView};
use domain::aggregate::Aggregate;
use domain::feedback::{Feedback, FeedbackEvent, Source, TriageState};
use domain::RecordedEvent;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::Projection;

/// When one source's submissions form a burst group: `count` of them within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstRule {
    pub count: usize,
    pub window: Duration,
}

impl Default for BurstRule {
    fn default() -> Self {
        BurstRule {
            count: 5,
            window: Duration::from_secs(10 * 60),
        }
    }
}

impl BurstRule {
    /// The rule from `FEEDBACK_BURST_COUNT` and `FEEDBACK_BURST_MINUTES` (defaults: 5 within 10
    /// minutes; a value that is not a positive whole number is reported and the default used). It
    /// applies to submissions projected from then on; a rebuild regroups everything by it.
    pub fn from_env() -> BurstRule {
        let read = |name: &str, default: u64| -> u64 {
            let Ok(value) = std::env::var(name) else {
                return default;
            };
            match value.parse::<u64>() {
                Ok(value) if value > 0 => value,
                _ => {
                    tracing::warn!(%name, %value, default, "not a positive whole number; using the default");
                    default
                }
            }
        };
        let default = BurstRule::default();
        BurstRule {
            count: read("FEEDBACK_BURST_COUNT", default.count as u64) as usize,
            window: Duration::from_secs(
                60 * read("FEEDBACK_BURST_MINUTES", default.window.as_secs() / 60),
            ),
        }
    }
}

pub struct FeedbackTriage {
    pub burst: BurstRule,
}

/// A submission as the projection works on it.
#[derive(Debug, Clone)]
struct Item {
    view: FeedbackItem,
    origin: String,
    group_id: Uuid,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Group {
    id: Uuid,
    kind: String,
    fingerprint: Option<String>,
    origin: Option<String>,
    items: i64,
    open: i64,
    triaged: i64,
    in_progress: i64,
    done: i64,
    archived: i64,
    severity: i16,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
}

impl Group {
    fn count(&mut self, state: TriageState) -> &mut i64 {
        match state {
            TriageState::Open => &mut self.open,
            TriageState::Triaged => &mut self.triaged,
            TriageState::InProgress => &mut self.in_progress,
            TriageState::Done => &mut self.done,
            TriageState::Archived => &mut self.archived,
        }
    }

    /// The least advanced state any of its items is in; archived when all are.
    fn state(&self) -> TriageState {
        [
            (self.open, TriageState::Open),
            (self.triaged, TriageState::Triaged),
            (self.in_progress, TriageState::InProgress),
            (self.done, TriageState::Done),
        ]
        .into_iter()
        .find(|(count, _)| *count > 0)
        .map_or(TriageState::Archived, |(_, state)| state)
    }

    fn add(&mut self, item: &FeedbackItem) {
        self.items += 1;
        *self.count(item.state) += 1;
        self.severity = self.severity.max(item.severity.rank());
        self.first_at = self.first_at.min(item.created_at);
        self.last_at = self.last_at.max(item.created_at);
        if self.kind == "single" && self.items > 1 {
            self.kind = "duplicate".into();
        }
    }

    /// Counts an item that was already counted here, in its new state (after [`Group::remove`]).
    fn add_back(&mut self, item: &FeedbackItem) {
        self.items += 1;
        *self.count(item.state) += 1;
    }

    fn remove(&mut self, item: &FeedbackItem) {
        self.items -= 1;
        *self.count(item.state) -= 1;
    }

    fn empty(id: Uuid, kind: &str, item: &FeedbackItem, origin: &str) -> Group {
        Group {
            id,
            kind: kind.into(),
            fingerprint: (kind != "burst").then(|| item.fingerprint.clone()),
            origin: (kind == "burst").then(|| origin.to_owned()),
            items: 0,
            open: 0,
            triaged: 0,
            in_progress: 0,
            done: 0,
            archived: 0,
            severity: 0,
            first_at: item.created_at,
            last_at: item.created_at,
        }
    }
}

/// The source bursts are counted per: the user for reports, the client address for probes.
fn origin(source: Source, event: &RecordedEvent) -> String {
    match (source, &event.metadata.client_ip) {
        (Source::Probe, Some(ip)) => format!("ip:{ip}"),
        _ => format!("user:{}", event.metadata.actor.id),
    }
}

/// What a batch works on: the items and groups it touches, loaded once, changed in memory, written
/// back once.
#[derive(Default)]
struct Batch {
    items: HashMap<Uuid, Item>,
    groups: HashMap<Uuid, Group>,
    /// The group of the newest submission with each fingerprint.
    by_fingerprint: HashMap<String, Uuid>,
    /// Each source's submissions, oldest first, as far back as a burst window reaches.
    recent: HashMap<String, Vec<Uuid>>,
    /// Each source's newest burst group.
    bursts: HashMap<String, Uuid>,
    changed: Vec<Uuid>,
    /// What the batch adds to each kept count (`feedback_counts`).
    counts: HashMap<String, i64>,
}

impl Batch {
    fn count(&mut self, scope: String, by: i64) {
        *self.counts.entry(scope).or_default() += by;
    }

    /// Counts a new submission in every scope it belongs to.
    fn count_new(&mut self, item: &FeedbackItem) {
        self.count(FEEDBACK_ALL.to_owned(), 1);
        self.count(feedback_count("state", item.state.as_str()), 1);
        self.count(feedback_count("quality", item.quality.as_str()), 1);
        self.count(
            feedback_count("severity", &item.severity.rank().to_string()),
            1,
        );
        self.count(feedback_count("source", item.source.as_str()), 1);
        for group in &item.groups {
            self.count(feedback_count("group", group.as_str()), 1);
        }
        if let Some(organization) = item.organization_id {
            self.count(feedback_count("organization", &organization.to_string()), 1);
        }
    }
}

#[async_trait]
impl Projection for FeedbackTriage {
    fn name(&self) -> &'static str {
        FEEDBACK
    }

    fn tables(&self) -> &'static [&'static str] {
        &["feedback", "feedback_groups", "feedback_counts"]
    }

    fn handles(&self, stream_type: &str) -> bool {
        stream_type == Feedback::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        let mut decoded = Vec::with_capacity(events.len());
        for event in events {
            let feedback: FeedbackEvent = event.decode().map_err(|e| {
                anyhow::anyhow!("event {} of {}: {e}", event.event_id, event.stream_id)
            })?;
            let id: Uuid = event.stream_id[Feedback::TYPE.len() + 1..].parse()?;
            decoded.push((event, id, feedback));
        }
        let mut batch = self.load(conn, &decoded).await?;
        for (event, id, feedback) in &decoded {
            match feedback {
                FeedbackEvent::Submitted { .. } => self.submit(&mut batch, event, *id, feedback)?,
                FeedbackEvent::Transitioned {
                    from,
                    to,
                    note,
                    assignee_id,
                } => {
                    let item = batch.items.get_mut(id).ok_or_else(|| {
                        anyhow::anyhow!("feedback {id} moved before it was submitted")
                    })?;
                    let group = batch
                        .groups
                        .get_mut(&item.group_id)
                        .ok_or_else(|| anyhow::anyhow!("feedback {id}'s group is missing"))?;
                    group.remove(&item.view);
                    item.view.state = *to;
                    if assignee_id.is_some() {
                        item.view.assignee_id = *assignee_id;
                    }
                    item.view.updated_at = event.recorded_at;
                    item.view.transitions.push(TransitionView {
                        from: *from,
                        to: *to,
                        by: event.metadata.actor.id.clone(),
                        at: event.recorded_at,
                        note: note.clone(),
                        assignee_id: *assignee_id,
                    });
                    group.add_back(&item.view);
                    batch.changed.push(*id);
                    batch.count(feedback_count("state", from.as_str()), -1);
                    batch.count(feedback_count("state", to.as_str()), 1);
                }
            }
        }
        write(conn, &batch).await
    }
}

impl FeedbackTriage {
    /// Loads what the batch's events need: the items they move, the groups of the submissions' earlier
    /// duplicates, and their sources' recent submissions and burst groups.
    async fn load(
        &self,
        conn: &mut PgConnection,
        events: &[(&RecordedEvent, Uuid, FeedbackEvent)],
    ) -> anyhow::Result<Batch> {
        let mut submitted = Vec::new();
        let mut fingerprints = Vec::new();
        let mut origins = Vec::new();
        let mut earliest: Option<DateTime<Utc>> = None;
        for (event, id, feedback) in events {
            if let FeedbackEvent::Submitted {
                fingerprint,
                source,
                ..
            } = feedback
            {
                submitted.push(*id);
                fingerprints.push(fingerprint.clone());
                origins.push(origin(*source, event));
                earliest = Some(earliest.map_or(event.recorded_at, |e| e.min(event.recorded_at)));
            }
        }
        let moved: Vec<Uuid> = events
            .iter()
            .filter(|(_, id, e)| {
                matches!(e, FeedbackEvent::Transitioned { .. }) && !submitted.contains(id)
            })
            .map(|(_, id, _)| *id)
            .collect();
        let window = chrono::Duration::from_std(self.burst.window)?;
        let since = earliest.map_or(DateTime::<Utc>::MAX_UTC, |e| e - window);

        let mut batch = Batch::default();
        // The moved items, and the sources' submissions within a window of the batch's first (at most
        // as many per source as a burst needs).
        let rows: Vec<(Uuid, String, Uuid, Json<FeedbackItem>)> = sqlx::query_as(
            "SELECT id, origin, group_id, data FROM feedback WHERE id = ANY($1) \
             UNION ALL \
             SELECT r.* FROM (SELECT DISTINCT unnest($2::text[]) AS origin) o \
             CROSS JOIN LATERAL (SELECT id, origin, group_id, data FROM feedback f \
               WHERE f.origin = o.origin AND f.created_at >= $3 \
               ORDER BY f.created_at DESC LIMIT $4) r",
        )
        .bind(&moved)
        .bind(&origins)
        .bind(since)
        .bind(self.burst.count as i64)
        .fetch_all(&mut *conn)
        .await?;
        let mut recent: Vec<(DateTime<Utc>, Uuid, String)> = Vec::new();
        for (id, origin, group_id, data) in rows {
            // An item can come from both halves of the query.
            if batch.items.contains_key(&id) {
                continue;
            }
            if data.0.created_at >= since && origins.contains(&origin) {
                recent.push((data.0.created_at, id, origin.clone()));
            }
            batch.items.insert(
                id,
                Item {
                    view: data.0,
                    origin,
                    group_id,
                },
            );
        }
        recent.sort();
        for (_, id, origin) in recent {
            batch.recent.entry(origin).or_default().push(id);
        }
        let duplicates: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT DISTINCT ON (fingerprint) fingerprint, group_id FROM feedback \
             WHERE fingerprint = ANY($1) ORDER BY fingerprint, created_at DESC, id DESC",
        )
        .bind(&fingerprints)
        .fetch_all(&mut *conn)
        .await?;
        batch.by_fingerprint.extend(duplicates);
        let bursts: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT DISTINCT ON (origin) origin, id FROM feedback_groups \
             WHERE kind = 'burst' AND origin = ANY($1) ORDER BY origin, last_at DESC",
        )
        .bind(&origins)
        .fetch_all(&mut *conn)
        .await?;
        batch.bursts.extend(bursts);
        let group_ids: Vec<Uuid> = batch
            .items
            .values()
            .map(|item| item.group_id)
            .chain(batch.by_fingerprint.values().copied())
            .chain(batch.bursts.values().copied())
            .collect();
        let groups: Vec<Group> = sqlx::query_as(
            "SELECT id, kind, fingerprint, origin, items, open, triaged, in_progress, done, archived, \
                    severity, first_at, last_at \
             FROM feedback_groups WHERE id = ANY($1)",
        )
        .bind(&group_ids)
        .fetch_all(&mut *conn)
        .await?;
        batch.groups.extend(groups.into_iter().map(|g| (g.id, g)));
        Ok(batch)
    }

    /// Files a new submission into its group (see the module docs).
    fn submit(
        &self,
        batch: &mut Batch,
        event: &RecordedEvent,
        id: Uuid,
        submitted: &FeedbackEvent,
    ) -> anyhow::Result<()> {
        let mut state = Feedback::default();
        state.apply(submitted, event.recorded_at);
        let data = state
            .live
            .ok_or_else(|| anyhow::anyhow!("feedback {id}: a submission that folds to nothing"))?;
        let view = FeedbackItem::new(&data, &event.metadata);
        let origin = origin(data.source, event);
        let at = view.created_at;
        let window = chrono::Duration::from_std(self.burst.window)?;

        let duplicate = batch
            .by_fingerprint
            .get(&view.fingerprint)
            .copied()
            .filter(|group| batch.groups.contains_key(group));
        let burst = batch.bursts.get(&origin).copied().filter(|group| {
            batch
                .groups
                .get(group)
                .is_some_and(|g| g.last_at >= at - window)
        });
        let in_window: Vec<Uuid> = batch
            .recent
            .get(&origin)
            .map(|ids| {
                ids.iter()
                    .copied()
                    .filter(|earlier| batch.items[earlier].view.created_at >= at - window)
                    .collect()
            })
            .unwrap_or_default();

        let group_id = if let Some(group) = duplicate.or(burst) {
            group
        } else if in_window.len() + 1 >= self.burst.count {
            // A new burst: the source's recent submissions that are alone in their groups join it.
            let mut group = Group::empty(id, "burst", &view, &origin);
            for earlier in in_window {
                let item = batch
                    .items
                    .get_mut(&earlier)
                    .expect("recent items are loaded");
                let alone = batch
                    .groups
                    .get(&item.group_id)
                    .is_some_and(|g| g.items == 1 && g.kind == "single");
                if alone {
                    batch
                        .groups
                        .get_mut(&item.group_id)
                        .expect("checked")
                        .remove(&item.view);
                    if let Some(fingerprint) = batch
                        .by_fingerprint
                        .get_mut(&item.view.fingerprint)
                        .filter(|g| **g == item.group_id)
                    {
                        *fingerprint = id;
                    }
                    item.group_id = id;
                    group.add(&item.view);
                    batch.changed.push(earlier);
                }
            }
            batch.groups.insert(id, group);
            id
        } else {
            batch
                .groups
                .insert(id, Group::empty(id, "single", &view, &origin));
            id
        };
        let group = batch.groups.get_mut(&group_id).expect("the group exists");
        group.add(&view);
        if group.kind == "burst" {
            batch.bursts.insert(origin.clone(), group_id);
        }
        batch
            .by_fingerprint
            .insert(view.fingerprint.clone(), group_id);
        batch.recent.entry(origin.clone()).or_default().push(id);
        batch.count_new(&view);
        batch.items.insert(
            id,
            Item {
                view,
                origin,
                group_id,
            },
        );
        batch.changed.push(id);
        Ok(())
    }
}

/// Writes the batch's changed items and groups back, and drops the groups left empty.
async fn write(conn: &mut PgConnection, batch: &Batch) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    let items: Vec<&Item> = batch
        .changed
        .iter()
        .filter(|id| seen.insert(**id))
        .map(|id| &batch.items[id])
        .collect();
    sqlx::query(
        "INSERT INTO feedback (id, organization_id, origin, source, severity, state, quality, groups, \
                               fingerprint, group_id, message, created_at, data) \
         SELECT id, organization_id, origin, source, severity, state, quality, \
                ARRAY(SELECT jsonb_array_elements_text(groups)), fingerprint, group_id, message, \
                created_at, data \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::smallint[], $6::text[], \
                     $7::text[], $8::jsonb[], $9::text[], $10::uuid[], $11::text[], \
                     $12::timestamptz[], $13::jsonb[]) \
           AS u(id, organization_id, origin, source, severity, state, quality, groups, fingerprint, \
                group_id, message, created_at, data) \
         ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, group_id = EXCLUDED.group_id, \
                                        data = EXCLUDED.data",
    )
    .bind(items.iter().map(|i| i.view.id).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.view.organization_id).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.origin.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.view.source.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.view.severity.rank()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.view.state.as_str()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.view.quality.as_str()).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| serde_json::to_value(&i.view.groups))
            .collect::<Result<Vec<_>, _>>()?,
    )
    .bind(items.iter().map(|i| i.view.fingerprint.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.group_id).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.view.message.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.view.created_at).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|i| serde_json::to_value(&i.view))
            .collect::<Result<Vec<_>, _>>()?,
    )
    .execute(&mut *conn)
    .await?;
    let (kept, emptied): (Vec<&Group>, Vec<&Group>) =
        batch.groups.values().partition(|g| g.items > 0);
    sqlx::query("DELETE FROM feedback_groups WHERE id = ANY($1)")
        .bind(emptied.iter().map(|g| g.id).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO feedback_groups (id, kind, fingerprint, origin, items, open, triaged, in_progress, \
                                      done, archived, state, severity, first_at, last_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], \
                              $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], \
                              $11::text[], $12::smallint[], $13::timestamptz[], $14::timestamptz[]) \
         ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, items = EXCLUDED.items, \
           open = EXCLUDED.open, triaged = EXCLUDED.triaged, in_progress = EXCLUDED.in_progress, \
           done = EXCLUDED.done, archived = EXCLUDED.archived, state = EXCLUDED.state, \
           severity = EXCLUDED.severity, first_at = EXCLUDED.first_at, last_at = EXCLUDED.last_at",
    )
    .bind(kept.iter().map(|g| g.id).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.kind.clone()).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.fingerprint.clone()).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.origin.clone()).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.items).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.open).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.triaged).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.in_progress).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.done).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.archived).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.state().as_str()).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.severity).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.first_at).collect::<Vec<_>>())
    .bind(kept.iter().map(|g| g.last_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    let (scopes, counts): (Vec<&String>, Vec<i64>) =
        batch.counts.iter().map(|(s, c)| (s, *c)).unzip();
    sqlx::query(
        "INSERT INTO feedback_counts (scope, count) SELECT * FROM UNNEST($1::text[], $2::bigint[]) \
         ON CONFLICT (scope) DO UPDATE SET count = feedback_counts.count + EXCLUDED.count",
    )
    .bind(scopes)
    .bind(counts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
