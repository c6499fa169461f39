//! How jobs and events are laid out in Redis, and how they are read back.
//!
//! A job is one hash. Its event log lives in the same hash as fields `e:1`, `e:2`, … holding
//! MessagePack maps written by the scripts (`t` type, `at` time, `a` attempt, and `w`
//! worker, `e` error, `r` reason, `v`/`m` progress, `due` run time where they apply), so one key
//! holds all of a job and one PEXPIRE ends it. The result is stored once, in the `result`
//! field, and joined to the COMPLETED event when the event is read. Fields that belong to one
//! state (`run_at` to SCHEDULED, `lease_until` to RUNNING) are left behind when the job moves
//! on, to save the scripts a command, and read only in their state.
//!
//! What never changes after submission and only jobd reads is one MessagePack field, `spec`
//! (`Spec`): one field to write and look up instead of ten, in a hash Redis scans field by
//! field. The fields the scripts read stay fields of their own: `kind`, `retention` and
//! `created` (Redis's time of the submission), `size` (what the job weighs in a claim's
//! reply), and `lease_default` when the job names one. A running job's `ack_until` lives
//! until its worker acknowledges it.

use std::{collections::BTreeMap, collections::HashMap, time::Duration};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::domain::{
    Backoff, EventKind, Job, JobEvent, JobId, JobKind, JobState, Progress, UnixMillis,
};

/// The fields GetJob (and a claim, and ListJobs but for payload and result) reads: everything
/// but the event log and what only the scripts read.
pub const JOB_FIELDS: [&str; 15] = [
    "state",
    "spec",
    "payload",
    "attempt",
    "seq",
    "created",
    "started",
    "finished",
    "result",
    "error",
    "reason",
    "run_at",
    "lease_until",
    "ack_until",
    "worker",
];

/// A job's `spec` field: what never changes after submission. Named fields (a MessagePack
/// map), so that fail.lua and promote.lua can read `m`, `b*` and `p` with cmsgpack.
#[derive(Debug, Serialize, Deserialize)]
pub struct Spec {
    #[serde(rename = "k")]
    pub kind: String,
    #[serde(rename = "l", default)]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "p")]
    pub priority: i32,
    #[serde(rename = "m")]
    pub max_attempts: u32,
    /// Backoff: initial delay ms, multiplier, longest delay ms, jitter.
    #[serde(rename = "bi")]
    pub backoff_initial: u64,
    #[serde(rename = "bm")]
    pub backoff_multiplier: f64,
    #[serde(rename = "bx")]
    pub backoff_max: u64,
    #[serde(rename = "bj")]
    pub backoff_jitter: f64,
    /// The submitter's W3C trace context.
    #[serde(rename = "t", default)]
    pub trace: BTreeMap<String, String>,
}

impl Spec {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        rmp_serde::to_vec_named(self)
            .map_err(|e| StoreError::corrupt(format!("encoding a spec: {e}")))
    }
}

pub fn event_field(sequence: u64) -> String {
    format!("e:{sequence}")
}

/// A job's stored fields, by name.
pub struct Fields(HashMap<String, Bytes>);

impl Fields {
    /// From the values of HMGET `names`, in order; absent fields are left out.
    pub fn from_values(names: &[&str], values: Vec<Option<Bytes>>) -> Self {
        Self(
            names
                .iter()
                .zip(values)
                .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
                .collect(),
        )
    }

    fn bytes(&self, name: &str) -> Option<Bytes> {
        self.0.get(name).cloned()
    }

    fn text(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.0.get(name).map(|raw| utf8(raw)).transpose()
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, StoreError> {
        number(self.0.get(name).map(|raw| &raw[..]))
            .map_err(|_| StoreError::corrupt(format!("job field {name} is not a number")))
    }

    fn millis(&self, name: &str) -> Result<Option<UnixMillis>, StoreError> {
        Ok(self.number(name)?.map(UnixMillis))
    }

    fn spec(&self) -> Result<Spec, StoreError> {
        let raw = self
            .0
            .get("spec")
            .ok_or_else(|| StoreError::corrupt("job without spec"))?;
        rmp_serde::from_slice(raw).map_err(|e| StoreError::corrupt(format!("job field spec: {e}")))
    }

    /// Builds the job; `None` when it does not exist.
    pub fn into_job(self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let Some(state) = self.text("state")? else {
            return Ok(None);
        };
        let state = JobState::from_name(&state)
            .ok_or_else(|| StoreError::corrupt(format!("job state {state:?}")))?;
        let spec = self.spec()?;
        let kind =
            JobKind::parse("kind", &spec.kind).map_err(|_| StoreError::corrupt("job kind"))?;
        Ok(Some(Job {
            id: id.clone(),
            kind,
            state,
            attempt: self.number("attempt")?.unwrap_or(0),
            payload: self.bytes("payload").unwrap_or_default(),
            labels: spec.labels,
            result: self
                .bytes("result")
                .filter(|_| state == JobState::Completed),
            error: self.text("error")?.filter(|e| !e.is_empty()),
            cancel_reason: self.text("reason")?,
            created_at: self
                .millis("created")?
                .ok_or_else(|| StoreError::corrupt("job without created"))?,
            started_at: self.millis("started")?,
            finished_at: self.millis("finished")?,
            last_sequence: self.number("seq")?.unwrap_or(0),
            max_attempts: spec.max_attempts,
            priority: spec.priority,
            backoff: Backoff {
                initial: Duration::from_millis(spec.backoff_initial),
                multiplier: spec.backoff_multiplier,
                max: Duration::from_millis(spec.backoff_max),
                jitter: spec.backoff_jitter,
            },
            run_at: self
                .millis("run_at")?
                .filter(|_| state == JobState::Scheduled),
            lease_expires_at: self
                .millis("lease_until")?
                .filter(|_| state == JobState::Running),
            ack_deadline: self
                .millis("ack_until")?
                .filter(|_| state == JobState::Running),
            worker_id: self.text("worker")?,
            trace_context: spec.trace,
        }))
    }
}

/// An event that jobd knows all of but its time and attempt before the script that records
/// it runs.
#[derive(Debug, Clone, Copy)]
pub enum EventStart<'a> {
    Queued,
    Started { worker: &'a str },
    Progress(&'a Progress),
    Completed,
}

/// The start of an event as the scripts store it (a MessagePack map, see `EventRecord`): all
/// but its time `at` and attempt `a`, which the script appends (`finish_event` in
/// lua/lib.lua), Redis's clock giving the time. Building the map in Lua and packing it with
/// cmsgpack was a tenth of Redis's work per job.
pub fn event_head(event: EventStart) -> Vec<u8> {
    fn write(head: &mut Vec<u8>, text: &str) {
        rmp::encode::write_str(head, text).expect("writing to a Vec cannot fail");
    }
    let (kind, extra) = match event {
        EventStart::Queued => ("queued", 0),
        EventStart::Started { .. } => ("started", 1),
        EventStart::Progress(progress) => ("progress", 1 + u32::from(progress.value.is_some())),
        EventStart::Completed => ("completed", 0),
    };
    let mut head = Vec::with_capacity(48);
    // t, the extra fields, then at and a from the script.
    rmp::encode::write_map_len(&mut head, 3 + extra).expect("writing to a Vec cannot fail");
    write(&mut head, "t");
    write(&mut head, kind);
    match event {
        EventStart::Started { worker } => {
            write(&mut head, "w");
            write(&mut head, worker);
        }
        EventStart::Progress(progress) => {
            write(&mut head, "m");
            write(&mut head, &progress.message);
            if let Some(value) = progress.value {
                write(&mut head, "v");
                rmp::encode::write_f64(&mut head, value).expect("writing to a Vec cannot fail");
            }
        }
        EventStart::Queued | EventStart::Completed => {}
    }
    head
}

// The attempt byte the scripts append is a positive fixint only below 0x80.
const _: () = assert!(crate::domain::MAX_ATTEMPTS < 0x80);

/// An event as the scripts write it.
#[derive(Debug, Deserialize)]
struct EventRecord {
    t: String,
    at: u64,
    a: u32,
    #[serde(default)]
    w: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    r: Option<String>,
    #[serde(default)]
    v: Option<f64>,
    #[serde(default)]
    m: Option<String>,
    #[serde(default)]
    due: Option<u64>,
}

/// Decodes one stored event; `result` is the job's result, joined to a COMPLETED event.
pub fn decode_event(
    job_id: &JobId,
    sequence: u64,
    raw: &[u8],
    result: &Option<Bytes>,
) -> Result<JobEvent, StoreError> {
    let record: EventRecord = rmp_serde::from_slice(raw)
        .map_err(|e| StoreError::corrupt(format!("event {sequence} of {job_id}: {e}")))?;
    let run_at = || {
        record
            .due
            .map(UnixMillis)
            .ok_or_else(|| StoreError::corrupt(format!("event {sequence} of {job_id} lacks due")))
    };
    let kind = match record.t.as_str() {
        "scheduled" => EventKind::Scheduled { run_at: run_at()? },
        "queued" => EventKind::Queued,
        "started" => EventKind::Started {
            worker_id: record.w.unwrap_or_default(),
        },
        "progress" => EventKind::Progress(Progress {
            value: record.v,
            message: record.m.unwrap_or_default(),
        }),
        "completed" => EventKind::Completed {
            result: result.clone().unwrap_or_default(),
        },
        "failed" => EventKind::Failed {
            error: record.e.unwrap_or_default(),
        },
        "cancelled" => EventKind::Cancelled {
            reason: record.r.unwrap_or_default(),
        },
        "released" => EventKind::Released {
            reason: record.r.unwrap_or_default(),
        },
        "retry_scheduled" => EventKind::RetryScheduled {
            run_at: run_at()?,
            error: record.e.unwrap_or_default(),
        },
        other => EventKind::Unrecognized {
            name: other.to_owned(),
        },
    };
    Ok(JobEvent {
        job_id: job_id.clone(),
        sequence,
        at: UnixMillis(record.at),
        attempt: record.a,
        kind,
    })
}

/// One event announced on the job wake-up channel, as the message carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncedEvent<'a> {
    pub sequence: u64,
    pub job_id: &'a str,
    /// The event as stored in the job's log.
    pub event: &'a [u8],
    /// For a COMPLETED event, the job's result when it was small enough to carry.
    pub result: Option<&'a [u8]>,
}

/// Splits a job wake-up message (see `Keys::job_channel`) into the events it announces: one
/// per line, each `<sequence> <job id> <n> <event> <m> <result>`, or `... <event> -` without
/// a result, where n and m count the bytes of the event and the result.
pub fn parse_announced(message: &[u8]) -> Result<Vec<AnnouncedEvent<'_>>, StoreError> {
    let mut cursor = Cursor(message);
    let mut announced = Vec::new();
    loop {
        let entry = cursor
            .announced_event()
            .ok_or_else(|| StoreError::corrupt("malformed wake-up message"))?;
        announced.push(entry);
        if cursor.0.is_empty() {
            return Ok(announced);
        }
        if !cursor.eat(b"\n") {
            return Err(StoreError::corrupt("malformed wake-up message"));
        }
    }
}

/// What is left of a wake-up message to parse.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn announced_event(&mut self) -> Option<AnnouncedEvent<'a>> {
        let sequence = self.number()?;
        let job_id = std::str::from_utf8(self.word()?).ok()?;
        let length = self.number()?;
        let event = self.take(length)?;
        if !self.eat(b" ") {
            return None;
        }
        let result = if self.eat(b"-") {
            None
        } else {
            let length = self.number()?;
            Some(self.take(length)?)
        };
        Some(AnnouncedEvent {
            sequence,
            job_id,
            event,
            result,
        })
    }

    /// The text up to the next space; the space is consumed.
    fn word(&mut self) -> Option<&'a [u8]> {
        let space = self.0.iter().position(|&b| b == b' ')?;
        let word = &self.0[..space];
        self.0 = &self.0[space + 1..];
        Some(word)
    }

    fn number<T: std::str::FromStr>(&mut self) -> Option<T> {
        std::str::from_utf8(self.word()?).ok()?.parse().ok()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(taken)
    }

    fn eat(&mut self, prefix: &[u8]) -> bool {
        match self.0.strip_prefix(prefix) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }
}

/// Decodes an announced event. `None` when the announcement cannot stand for the stored event
/// (a COMPLETED event whose result was too large to carry): read the log instead.
pub fn decode_announced(
    job_id: &JobId,
    sequence: u64,
    event: &[u8],
    result: Option<&Bytes>,
) -> Result<Option<JobEvent>, StoreError> {
    let event = decode_event(job_id, sequence, event, &result.cloned())?;
    let needs_result = matches!(event.kind, EventKind::Completed { .. }) && result.is_none();
    Ok((!needs_result).then_some(event))
}

pub fn utf8(raw: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(raw.to_vec()).map_err(|_| StoreError::corrupt("text field is not UTF-8"))
}

pub fn number<T: std::str::FromStr>(raw: Option<&[u8]>) -> Result<Option<T>, StoreError> {
    raw.map(|raw| {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::corrupt("numeric field"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobIdGenerator, QueueName};

    /// An event head finished as `finish_event` in lua/lib.lua does: the time, packed as
    /// cmsgpack packs an integral number, and the attempt byte.
    fn finish(mut head: Vec<u8>, at: u64, attempt: u8) -> Vec<u8> {
        head.extend(b"\xa2at");
        rmp::encode::write_uint(&mut head, at).unwrap();
        head.extend(b"\xa1a");
        head.push(attempt);
        head
    }

    #[test]
    fn an_event_head_finished_by_a_script_decodes_as_the_event() {
        let id = JobIdGenerator::default().generate(&QueueName::parse("queue", "q").unwrap());
        let started = finish(
            event_head(EventStart::Started { worker: "w-1" }),
            1_764_000_000_123,
            100,
        );
        let event = decode_event(&id, 2, &started, &None).unwrap();
        assert_eq!(
            (event.at, event.attempt),
            (UnixMillis(1_764_000_000_123), 100)
        );
        assert_eq!(
            event.kind,
            EventKind::Started {
                worker_id: "w-1".into()
            }
        );
        let completed = finish(event_head(EventStart::Completed), 7, 1);
        let result = Some(Bytes::from_static(b"done"));
        let event = decode_event(&id, 3, &completed, &result).unwrap();
        assert_eq!((event.at, event.attempt), (UnixMillis(7), 1));
        assert_eq!(
            event.kind,
            EventKind::Completed {
                result: Bytes::from_static(b"done")
            }
        );
        for progress in [
            Progress {
                value: Some(2.5),
                message: "half".into(),
            },
            Progress {
                value: None,
                message: String::new(),
            },
        ] {
            let raw = finish(event_head(EventStart::Progress(&progress)), 8, 3);
            let event = decode_event(&id, 4, &raw, &None).unwrap();
            assert_eq!((event.at, event.attempt), (UnixMillis(8), 3));
            assert_eq!(event.kind, EventKind::Progress(progress));
        }
    }

    #[test]
    fn an_event_of_an_unknown_type_decodes_as_unrecognized() {
        let id = JobIdGenerator::default().generate(&QueueName::parse("queue", "q").unwrap());
        let paused = packed(&[("t", "paused".into()), ("at", 9.into()), ("a", 2.into())]);
        let event = decode_event(&id, 4, &paused, &None).unwrap();
        assert_eq!(
            (event.sequence, event.at, event.attempt),
            (4, UnixMillis(9), 2)
        );
        assert_eq!(
            event.kind,
            EventKind::Unrecognized {
                name: "paused".into()
            }
        );
        assert!(!event.kind.is_terminal());
    }

    fn packed(event: &[(&str, rmpv::Value)]) -> Vec<u8> {
        let map = rmpv::Value::Map(
            event
                .iter()
                .map(|(k, v)| ((*k).into(), v.clone()))
                .collect(),
        );
        let mut packed = Vec::new();
        rmpv::encode::write_value(&mut packed, &map).unwrap();
        packed
    }

    /// One line of a wake-up message, as the scripts write it.
    fn line(sequence: u64, id: &str, event: &[u8], result: Option<&[u8]>) -> Vec<u8> {
        let mut line = format!("{sequence} {id} {} ", event.len()).into_bytes();
        line.extend(event);
        match result {
            Some(result) => {
                line.extend(format!(" {} ", result.len()).into_bytes());
                line.extend(result);
            }
            None => line.extend(b" -"),
        }
        line
    }

    #[test]
    fn wake_up_messages_split_into_their_events() {
        let started = packed(&[("t", "started".into()), ("at", 5.into())]);
        // Event and result bytes may hold spaces and newlines: lengths delimit them.
        let done = packed(&[("t", "completed".into()), ("r", " \n-".into())]);
        let mut message = line(2, "q.A", &started, None);
        message.push(b'\n');
        message.extend(line(3, "q.B", &done, Some(b"ok\n 1")));
        message.push(b'\n');
        message.extend(line(4, "q.C", &done, Some(b"")));
        let announced = parse_announced(&message).unwrap();
        assert_eq!(
            announced,
            vec![
                AnnouncedEvent {
                    sequence: 2,
                    job_id: "q.A",
                    event: &started,
                    result: None
                },
                AnnouncedEvent {
                    sequence: 3,
                    job_id: "q.B",
                    event: &done,
                    result: Some(b"ok\n 1")
                },
                AnnouncedEvent {
                    sequence: 4,
                    job_id: "q.C",
                    event: &done,
                    result: Some(b"")
                },
            ]
        );
        for bad in [
            &b""[..],
            b"garbage",
            b"2 q.A 99 short -",
            b"2 q.A 1 x",
            b"2 q.A 1 x -\n",
            b"2 q.A 1 x 5 abc",
            b"x q.A 1 x -",
        ] {
            assert!(
                parse_announced(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn announced_events_decode_as_stored() {
        let id = JobIdGenerator::default().generate(&QueueName::parse("q", "q").unwrap());
        let started = packed(&[
            ("t", "started".into()),
            ("at", 5.into()),
            ("a", 1.into()),
            ("w", "w1".into()),
        ]);
        let event = decode_announced(&id, 2, &started, None).unwrap().unwrap();
        assert_eq!(
            (event.sequence, event.attempt, event.at),
            (2, 1, UnixMillis(5))
        );
        assert_eq!(
            event.kind,
            EventKind::Started {
                worker_id: "w1".into()
            }
        );

        let done = packed(&[("t", "completed".into()), ("at", 6.into()), ("a", 1.into())]);
        let result = Bytes::from_static(b"ok \xff");
        let inline = decode_announced(&id, 3, &done, Some(&result))
            .unwrap()
            .unwrap();
        assert_eq!(inline.kind, EventKind::Completed { result });
        // A result too large to carry: the watcher must read the log.
        assert_eq!(decode_announced(&id, 3, &done, None).unwrap(), None);

        assert!(decode_announced(&id, 3, b"garbage", None).is_err());
    }
}
