//! How a job's events are stored (MessagePack maps, written by lua/lib.lua's `pack_event` and
//! `finish_event` only) and announced on the job channel, and how both are decoded.

use bytes::Bytes;
use serde::Deserialize;

use super::StoreError;
use crate::domain::{EventKind, JobEvent, JobId, Progress, UnixMillis};

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

impl AnnouncedEvent<'_> {
    /// The announced event of job `id`, and whether its result is still to be read: a
    /// COMPLETED event whose result was too large to carry comes with an empty result, which
    /// `JobStore::result` reads.
    pub fn decode(&self, id: &JobId) -> Result<(JobEvent, bool), StoreError> {
        let result = self.result.map(Bytes::copy_from_slice);
        let event = decode_event(id, self.sequence, self.event, &result)?;
        let needs_result = matches!(event.kind, EventKind::Completed { .. }) && result.is_none();
        Ok((event, needs_result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobIdGenerator, QueueName};

    #[test]
    fn events_decode_as_the_scripts_pack_them() {
        let id = JobIdGenerator::default().generate(&QueueName::parse("queue", "q").unwrap());
        // t, at, a first, then the type's fields, as pack_event in lua/lib.lua writes them.
        let started = packed(&[
            ("t", "started".into()),
            ("at", 1_764_000_000_123u64.into()),
            ("a", 100.into()),
            ("w", "w-1".into()),
        ]);
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
        let completed = packed(&[("t", "completed".into()), ("at", 7.into()), ("a", 1.into())]);
        let result = Some(Bytes::from_static(b"done"));
        let event = decode_event(&id, 3, &completed, &result).unwrap();
        assert_eq!((event.at, event.attempt), (UnixMillis(7), 1));
        assert_eq!(
            event.kind,
            EventKind::Completed {
                result: Bytes::from_static(b"done")
            }
        );
        // cmsgpack packs a whole value as an integer, another as a float.
        for (value, packed_value) in [(50.0, rmpv::Value::from(50)), (2.5, 2.5f32.into())] {
            let progress = packed(&[
                ("t", "progress".into()),
                ("at", 8.into()),
                ("a", 3.into()),
                ("m", "half".into()),
                ("v", packed_value),
            ]);
            let event = decode_event(&id, 4, &progress, &None).unwrap();
            assert_eq!(
                event.kind,
                EventKind::Progress(Progress {
                    value: Some(value),
                    message: "half".into()
                })
            );
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
        let (event, to_read) = announced(2, &started, None).decode(&id).unwrap();
        assert!(!to_read);
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
        let (inline, to_read) = announced(3, &done, Some(&result)).decode(&id).unwrap();
        assert_eq!(inline.kind, EventKind::Completed { result });
        assert!(!to_read);
        // A result too large to carry: the event comes without it, to be read.
        let (event, to_read) = announced(3, &done, None).decode(&id).unwrap();
        assert_eq!(
            event.kind,
            EventKind::Completed {
                result: Bytes::new()
            }
        );
        assert!(to_read);

        assert!(announced(3, b"garbage", None).decode(&id).is_err());
    }

    fn announced<'a>(
        sequence: u64,
        event: &'a [u8],
        result: Option<&'a [u8]>,
    ) -> AnnouncedEvent<'a> {
        AnnouncedEvent {
            sequence,
            job_id: "q.A",
            event,
            result,
        }
    }
}
