//! Schedule inbound: a message at set times — a cron expression in a time zone, or a fixed
//! interval — for routes that start work themselves (call an API, export a batch).
//!
//! Each fire's time is the store's record of where the schedule stands: it is committed in
//! the same transaction as the fire's message (an inbound position), and the fire's time is
//! the message's key, so a fire is stored once even if two nodes both fire it. On a shared
//! store one node runs the schedule, another takes over when it dies. Fires missed while no
//! node ran (`missed`) are skipped or caught up once.

use super::{Inbound, Intake};
use crate::config::values::Duration;
use crate::message::{Headers, Message};
use crate::steps::BuildContext;
use crate::template::Template;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// The schedule's position among the route's inbound positions in the store.
const POSITION: &str = "schedule";
/// The search field holding a fire's time, which makes a fire stored twice a duplicate.
pub const KEY_NAME: &str = "schedule_fire";

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ScheduleInbound")]
pub struct Config {
    /// A cron expression: five fields (`30 2 * * 1-5`: 02:30 Monday to Friday), or six with
    /// seconds first. Either `cron` or `every`.
    #[serde(default)]
    pub cron: Option<String>,
    /// A fixed interval (`10m`); the first fire is one interval after the first start.
    #[serde(default)]
    pub every: Option<Duration>,
    /// The time zone of `cron` (`Europe/Amsterdam`; default `UTC`): 02:30 stays 02:30 local
    /// time across daylight saving changes.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The message body, a template (`{"run": "{{header.schedule.fire_time}}"}`); empty by
    /// default.
    #[serde(default)]
    pub body: Option<Template>,
    /// More headers, templates.
    #[serde(default)]
    pub headers: BTreeMap<String, Template>,
    /// Fires missed while no node ran the schedule: `once` (default: one fire at the start,
    /// for the latest missed time) or `skip`.
    #[serde(default)]
    pub missed: Missed,
}

#[derive(
    Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    #[default]
    Once,
    Skip,
}

/// When something happens: cron times in a zone, or every so often.
pub enum Timing {
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    Every(std::time::Duration),
}

impl Timing {
    pub fn new(
        cron: Option<&str>,
        every: Option<Duration>,
        time_zone: Option<&str>,
    ) -> anyhow::Result<Timing> {
        match (cron, every) {
            (Some(expr), None) => {
                let zone = match time_zone {
                    Some(z) => z.parse::<chrono_tz::Tz>().map_err(|_| {
                        anyhow::anyhow!("time_zone `{z}` is not a time zone; write one such as Europe/Amsterdam or UTC")
                    })?,
                    None => chrono_tz::UTC,
                };
                let parsed = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build()
                    .parse(expr)
                    .map_err(|e| anyhow::anyhow!("cron `{expr}`: {e}"))?;
                Ok(Timing::Cron(Box::new(parsed), zone))
            }
            (None, Some(every)) if every.0.is_zero() => {
                anyhow::bail!("every must be longer than 0")
            }
            (None, Some(every)) => {
                if time_zone.is_some() {
                    anyhow::bail!("time_zone is for `cron`; `every` counts from the last fire");
                }
                Ok(Timing::Every(every.0))
            }
            _ => anyhow::bail!(
                "give either `cron` (an expression) or `every` (an interval), one of them"
            ),
        }
    }

    /// The first time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron(cron, zone) => cron
                .find_next_occurrence(&t.with_timezone(zone), false)
                .ok()
                .map(|n| n.with_timezone(&Utc)),
            Timing::Every(every) => chrono::Duration::from_std(*every).ok().map(|d| t + d),
        }
    }

    /// The latest time at or before `now` that follows `after`, if any came.
    fn latest_missed(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.next_after(after)?;
        if first > now {
            return None;
        }
        match self {
            Timing::Cron(cron, zone) => cron
                .find_previous_occurrence(&now.with_timezone(zone), true)
                .ok()
                .map(|p| p.with_timezone(&Utc))
                .filter(|p| *p >= first),
            Timing::Every(every) => {
                let step = every.as_millis().max(1) as i64;
                let behind = (now - first).num_milliseconds() / step;
                Some(first + chrono::Duration::milliseconds(behind * step))
            }
        }
    }
}

impl Config {
    pub fn build(&self, _cx: &BuildContext) -> anyhow::Result<ScheduleInbound> {
        Ok(ScheduleInbound {
            timing: Timing::new(self.cron.as_deref(), self.every, self.time_zone.as_deref())?,
            config: self.clone(),
        })
    }
}

pub struct ScheduleInbound {
    config: Config,
    timing: Timing,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[async_trait]
impl Inbound for ScheduleInbound {
    async fn run(&self, intake: Intake, shutdown: CancellationToken) -> anyhow::Result<()> {
        let now = Utc::now();
        let last = match intake.position(POSITION).await? {
            Some(text) => Some(
                DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| {
                        anyhow::anyhow!("the stored last fire `{text}` is not a time: {e}")
                    })?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        let mut next = match last {
            // Catch up on what was missed while no node ran the schedule.
            Some(last) => match self.timing.latest_missed(last, now) {
                Some(missed) if self.config.missed == Missed::Once => {
                    tracing::info!(route = %intake.route, fire_time = %stamp(missed),
                        "firing once for the schedule's missed times");
                    missed
                }
                Some(missed) => {
                    tracing::info!(route = %intake.route, latest = %stamp(missed),
                        "skipping the schedule's missed times (missed: skip)");
                    self.timing
                        .next_after(now)
                        .ok_or_else(|| anyhow::anyhow!("the schedule never fires again"))?
                }
                None => self
                    .timing
                    .next_after(last)
                    .ok_or_else(|| anyhow::anyhow!("the schedule never fires again"))?,
            },
            None => self
                .timing
                .next_after(now)
                .ok_or_else(|| anyhow::anyhow!("the schedule never fires"))?,
        };
        loop {
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            // Retried until stored: a fire is never dropped for a store hiccup.
            let mut backoff = crate::adapters::broker::Backoff::default();
            loop {
                match self.fire(&intake, next).await {
                    Ok(()) => break,
                    Err(e) => {
                        let wait = backoff.wait();
                        tracing::warn!(route = %intake.route, fire_time = %stamp(next), error = %e,
                            "cannot store the schedule's message; trying again");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.cancelled() => return Ok(()),
                        }
                    }
                }
            }
            let after = self.timing.next_after(next);
            next = match after {
                // Late by more than a period (a stalled machine): go on from now, once.
                Some(n) if n < Utc::now() => match self.timing.latest_missed(next, Utc::now()) {
                    Some(m) if self.config.missed == Missed::Once => m,
                    _ => match self.timing.next_after(Utc::now()) {
                        Some(n) => n,
                        None => return Ok(()),
                    },
                },
                Some(n) => n,
                None => {
                    tracing::info!(route = %intake.route, "the schedule has no more fire times");
                    shutdown.cancelled().await;
                    return Ok(());
                }
            };
        }
    }

    async fn failed(&self, _original: &Message, _reason: &str) -> anyhow::Result<()> {
        Ok(())
    }

    fn exclusive(&self) -> bool {
        true
    }
}

impl ScheduleInbound {
    async fn fire(&self, intake: &Intake, at: DateTime<Utc>) -> anyhow::Result<()> {
        let fire_time = stamp(at);
        let mut headers = Headers::new();
        headers.insert("schedule.fire_time".into(), fire_time.clone());
        // Templates see the fire time as a header.
        let mut shape = Message::new(&intake.route, Bytes::new());
        shape.headers = headers.clone();
        for (name, template) in &self.config.headers {
            headers.insert(name.clone(), template.render(&shape));
        }
        let body = self
            .config
            .body
            .as_ref()
            .map(|b| Bytes::from(b.render(&shape)))
            .unwrap_or_default();
        intake
            .submit_at(
                headers,
                body,
                Some((KEY_NAME.to_string(), fire_time.clone())),
                Some((POSITION.to_string(), fire_time)),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_times_follow_the_zone_and_weekdays_are_standard() {
        // 02:30 Amsterdam time, Monday to Friday (1-5 as in every cron: 0 is Sunday).
        let t = Timing::new(Some("30 2 * * 1-5"), None, Some("Europe/Amsterdam")).unwrap();
        // Friday 2026-12-04 10:00 UTC: next is Monday 2026-12-07 02:30 CET = 01:30 UTC.
        assert_eq!(
            t.next_after(at("2026-12-04T10:00:00Z")),
            Some(at("2026-12-07T01:30:00Z"))
        );
        // Summer time: 02:30 CEST = 00:30 UTC.
        assert_eq!(
            t.next_after(at("2026-07-01T10:00:00Z")),
            Some(at("2026-07-02T00:30:00Z"))
        );
        assert!(Timing::new(Some("61 * * * *"), None, None).is_err());
        assert!(Timing::new(Some("* * * * *"), None, Some("Mars/Base")).is_err());
        assert!(Timing::new(None, None, None).is_err());
    }

    #[test]
    fn the_latest_missed_time_is_found() {
        let every = Timing::new(None, Some(Duration::from_secs(600)), None).unwrap();
        assert_eq!(
            every.latest_missed(at("2026-12-01T10:00:00Z"), at("2026-12-01T10:35:00Z")),
            Some(at("2026-12-01T10:30:00Z"))
        );
        assert_eq!(
            every.latest_missed(at("2026-12-01T10:00:00Z"), at("2026-12-01T10:05:00Z")),
            None
        );
        let hourly = Timing::new(Some("0 * * * *"), None, None).unwrap();
        assert_eq!(
            hourly.latest_missed(at("2026-12-01T10:00:00Z"), at("2026-12-01T13:20:00Z")),
            Some(at("2026-12-01T13:00:00Z"))
        );
    }
}
