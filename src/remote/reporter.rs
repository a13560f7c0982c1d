//! Reports to the Cloud Assistant server: the endpoints and exact query strings of spec §2.3
//! (E4–E12), the retry rule per report kind, and the reading of the server's answer into a
//! `Verdict` (spec §9). It never decides what to do about a verdict; the runner and the engine do.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::remote::spool::{InFlight, SpoolWriter, SpooledRequest};
use crate::remote::transport::{
    query_escape, with_retries, Http, TransportError, DEFAULT_TIMEOUT, RETRY_ATTEMPTS, RETRY_PAUSE,
};
use crate::report::{Report, ReportError, ReportHead, Reporter, Span, Verdict, WallClock};

/// The body type of every report: the output text (spec §2.2, contentType `text`).
pub const REPORT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// `errDesc` is cut to this many bytes before escaping (spec §2.3).
pub const ERR_DESC_MAX: usize = 255;

/// Sends reports to the server. Called synchronously by the worker that owns the invocation.
pub struct RemoteReporter {
    http: Arc<dyn Http>,
    retry_pause: Duration,
    now_ms: fn() -> i64,
    /// Where a final report goes when its burst failed; `None`: it is only logged.
    spool: Option<SpoolWriter>,
    /// `RUNNING`, then (`begin_shutdown`) `DRAINING`, then after the first failed request
    /// `SPOOL_ONLY`: see `begin_shutdown`.
    mode: AtomicU8,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const SPOOL_ONLY: u8 = 2;

fn wall_now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl RemoteReporter {
    pub fn new(http: Arc<dyn Http>) -> RemoteReporter {
        RemoteReporter {
            http,
            retry_pause: RETRY_PAUSE,
            now_ms: wall_now_ms,
            spool: None,
            mode: AtomicU8::new(RUNNING),
        }
    }

    /// The agent is shutting down: whatever is still queued must not hold the exit up for a
    /// retry burst each. From here a report gets one attempt, with no pause; after the first
    /// request that fails, final reports are not tried at all but left in the spool (written
    /// ahead already), which the next start sends. While the server answers, the queue still
    /// drains to it at the speed of one request each.
    pub fn begin_shutdown(&self) {
        let _ = self
            .mode
            .compare_exchange(RUNNING, DRAINING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Final reports that the burst could not deliver are spooled and re-sent from there.
    pub fn with_spool(mut self, spool: SpoolWriter) -> RemoteReporter {
        self.spool = Some(spool);
        self
    }

    /// The pause between retries of final reports (2 s in production; tests shorten it).
    pub fn with_retry_pause(mut self, pause: Duration) -> RemoteReporter {
        self.retry_pause = pause;
        self
    }
}

/// True for the reports sent with the "1+3" rule; running and verified get one attempt.
pub fn retried(report: &Report) -> bool {
    !matches!(report, Report::Running { .. } | Report::Verified { .. })
}

/// The path and query string of a report (spec §2.3), with `currentTime` = `now_ms`.
pub fn path_and_query(report: &Report, now_ms: i64) -> String {
    let head = report.head();
    let mut q = match report {
        Report::Running { start_ms, .. } => {
            format!("/luban/api/v1/task/running?{}&start={start_ms}", ids(head))
        }
        Report::Finished { span, .. } => final_query("finish", head, span),
        Report::Timeout { span, .. } => final_query("timeout", head, span),
        Report::Failed { span, .. } => final_query("error", head, span),
        Report::Error {
            span,
            err_code,
            err_desc,
            ..
        } => format!(
            "{}&errCode={}&errDesc={}",
            final_query("error", head, span),
            query_escape(err_code),
            query_escape(truncate_utf8(err_desc, ERR_DESC_MAX))
        ),
        Report::Stopped {
            span,
            result,
            err_desc,
            ..
        } => {
            // Lower-case `exitcode` and no wall-clock parameters (spec §2.3 E10, §11.1 item 4).
            let mut q = format!(
                "/luban/api/v1/task/stopped?{}&start={}&end={}&exitcode={}&dropped={}&result={}",
                ids(head),
                span.start_ms,
                span.end_ms,
                span.exit_code,
                span.dropped,
                result.as_wire()
            );
            if let Some(desc) = err_desc {
                q.push_str("&errCode=TerminationException&errDesc=");
                q.push_str(&query_escape(truncate_utf8(desc, ERR_DESC_MAX)));
            }
            return q;
        }
        Report::Invalid { param, value, .. } => {
            return format!(
                "/luban/api/v1/task/invalid?{}&param={}&value={}",
                ids(head),
                query_escape(param),
                query_escape(value)
            )
        }
        Report::Verified { .. } => return format!("/luban/api/v1/task/verified?{}", ids(head)),
    };
    q.push_str(&wall_clock_params(&head.wall_clock, now_ms));
    q
}

/// `taskId` is not escaped (spec §2.3, §11.1 item 5).
fn ids(head: &ReportHead) -> String {
    format!(
        "taskId={}&invokeVersion={}",
        head.task_id, head.invoke_version
    )
}

fn final_query(endpoint: &str, head: &ReportHead, span: &Span) -> String {
    format!(
        "/luban/api/v1/task/{endpoint}?{}&start={}&end={}&exitCode={}&dropped={}",
        ids(head),
        span.start_ms,
        span.end_ms,
        span.exit_code,
        span.dropped
    )
}

/// Spec §5.8: Rate → `currentTime`; cron → `currentTime`, `offset`, `timeZone`; else nothing.
pub fn wall_clock_params(wall_clock: &WallClock, now_ms: i64) -> String {
    match wall_clock {
        WallClock::None => String::new(),
        WallClock::Rate => format!("&currentTime={now_ms}"),
        WallClock::Cron {
            zone_name,
            offset_secs,
        } => format!(
            "&currentTime={now_ms}&offset={offset_secs}&timeZone={}",
            query_escape(zone_name)
        ),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The server's answer to a report: `{"errorCode": .., "status": ..}` (keys matched without
/// regard to case, as Go does). Anything else, such as the plain `success`, is acceptance.
pub fn parse_verdict(body: &[u8]) -> Verdict {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Verdict::Accepted;
    };
    let field = |name: &str| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let code = field("errorCode");
    if code.is_empty() {
        return Verdict::Accepted;
    }
    Verdict::TaskError {
        code,
        status: field("status"),
    }
}

fn report_error(e: TransportError) -> ReportError {
    match e {
        TransportError::Unreachable(e) => ReportError::Unreachable(e),
        TransportError::Status(code) => ReportError::Status(code),
        TransportError::NoServer => ReportError::Unreachable(Box::new(TransportError::NoServer)),
    }
}

/// The request of one attempt, as the spool keeps it.
fn spooled(report: &Report, path_and_query: String) -> SpooledRequest {
    let head = report.head();
    SpooledRequest {
        path_and_query,
        content_type: REPORT_CONTENT_TYPE.to_string(),
        body: report.output().to_vec(),
        label: format!(
            "task={} invoke_version={} {}",
            head.task_id,
            head.invoke_version,
            report.event()
        ),
    }
}

/// A report recovered at start (the agent died while its invocation ran) as the spool keeps
/// it: never tried yet, so it goes out as soon as the spool thread can send it.
pub fn spool_recovered(spool: &SpoolWriter, report: &Report) -> std::io::Result<String> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    spool.push_now(&spooled(report, path_and_query(report, now_ms)))
}

impl Reporter for RemoteReporter {
    /// A final report is first written ahead to the spool (one small fsynced file), then
    /// tried 1 + 3 times; delivered, the file goes; not delivered, the last attempt's request
    /// is spooled for re-sending. So a kill during the burst loses nothing: the next start
    /// sends what was written ahead.
    fn send(&self, report: &Report) -> Result<Verdict, ReportError> {
        let ahead = self.write_ahead(report);
        self.attempts(report, ahead)
    }

    /// Written ahead, the report is safe before its first attempt: `durable` is called then,
    /// so the run record goes before the network is touched, and a kill during the attempts
    /// leaves the spool file alone (sent again at the next start) and no record (no second,
    /// different report).
    fn send_final(
        &self,
        report: &Report,
        durable: &mut dyn FnMut(),
    ) -> Result<Verdict, ReportError> {
        match self.write_ahead(report) {
            Some(ahead) => {
                durable();
                self.attempts(report, Some(ahead))
            }
            None => {
                let result = self.attempts(report, None);
                durable();
                result
            }
        }
    }
}

impl RemoteReporter {
    /// A final report, written to the spool before its first attempt; `None` for other
    /// reports, without a spool, or when the write failed (logged).
    fn write_ahead(&self, report: &Report) -> Option<InFlight> {
        let spool = self.spool.as_ref().filter(|_| report.is_final())?;
        let head = report.head();
        let req = spooled(report, path_and_query(report, (self.now_ms)()));
        match spool.write_ahead(&req) {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!(
                    "task={} invoke_version={} phase=report cannot write the {} report ahead to the spool ({e}); a kill during its attempts would lose it",
                    head.task_id,
                    head.invoke_version,
                    report.event()
                );
                None
            }
        }
    }

    /// The 1 + 3 burst (one attempt for running reports), then the spool when it failed.
    fn attempts(&self, report: &Report, ahead: Option<InFlight>) -> Result<Verdict, ReportError> {
        let head = report.head();
        let mode = self.mode.load(Ordering::Acquire);
        if mode == SPOOL_ONLY {
            if let Some(f) = ahead {
                let name = f.keep();
                log::info!(
                    "task={} invoke_version={} phase=report shutting down with the server not answering: the {} report stays in the spool ({name}) for the next start",
                    head.task_id,
                    head.invoke_version,
                    report.event()
                );
                return Ok(Verdict::Accepted);
            }
        }
        let attempts = if retried(report) && mode == RUNNING {
            RETRY_ATTEMPTS
        } else {
            1
        };
        let mut attempt = 0;
        let mut last_target = String::new();
        let sent = with_retries(attempts, self.retry_pause, None, || {
            attempt += 1;
            // `currentTime` is the time of this attempt (spec §5.8).
            last_target = path_and_query(report, (self.now_ms)());
            let r = self.http.post(
                &last_target,
                report.output(),
                REPORT_CONTENT_TYPE,
                DEFAULT_TIMEOUT,
            );
            if let Err(e) = &r {
                log::debug!(
                    "task={} invoke_version={} phase=report {} attempt {attempt}/{attempts} failed: {e}",
                    head.task_id,
                    head.invoke_version,
                    report.event()
                );
            }
            r
        });
        if sent.is_err() && mode != RUNNING {
            self.mode.store(SPOOL_ONLY, Ordering::Release);
        }
        let resp = match (sent, &self.spool) {
            (Ok(resp), _) => {
                if let Some(f) = ahead {
                    f.delivered();
                }
                resp
            }
            (Err(e), Some(spool)) if report.is_final() => {
                // The exact request of the last attempt, so the re-send is byte-identical.
                let req = spooled(report, last_target);
                let kept_ahead = ahead.is_some();
                let pushed = match ahead {
                    Some(f) => f.spool(spool, &req),
                    None => spool.push(&req),
                };
                return match pushed {
                    Ok(name) => {
                        log::warn!(
                            "task={} invoke_version={} phase=report {} report not delivered after {attempts} attempt(s) ({e}); spooled as {name}",
                            head.task_id,
                            head.invoke_version,
                            report.event()
                        );
                        Ok(Verdict::Accepted)
                    }
                    Err(io) => {
                        log::error!(
                            "task={} invoke_version={} phase=report {} report not delivered ({e}) and cannot be spooled ({io}){}",
                            head.task_id,
                            head.invoke_version,
                            report.event(),
                            if kept_ahead {
                                "; what was written ahead is sent at the next start"
                            } else {
                                ""
                            }
                        );
                        Err(report_error(e))
                    }
                };
            }
            (Err(e), _) => return Err(report_error(e)),
        };
        let verdict = parse_verdict(&resp.body);
        if let Verdict::TaskError { code, status } = &verdict {
            log::warn!(
                "task={} invoke_version={} phase=report server answered the {} report with errorCode={code} status={status}",
                head.task_id,
                head.invoke_version,
                report.event()
            );
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RepeatType;
    use crate::remote::transport::HttpResponse;
    use crate::report::StopResult;

    fn head(wall_clock: WallClock) -> ReportHead {
        ReportHead {
            task_id: "t-1".to_string(),
            invoke_version: 3,
            repeat: RepeatType::Once,
            wall_clock,
        }
    }

    fn span() -> Span {
        Span {
            start_ms: 1000,
            end_ms: 2000,
            exit_code: 7,
            dropped: 5,
        }
    }

    fn check(report: Report, expected: &str) {
        assert_eq!(path_and_query(&report, 1_700_000_000_000), expected);
    }

    #[test]
    fn running() {
        check(
            Report::Running {
                head: head(WallClock::None),
                start_ms: 1000,
                output: b"x".to_vec(),
            },
            "/luban/api/v1/task/running?taskId=t-1&invokeVersion=3&start=1000",
        );
    }

    #[test]
    fn finish() {
        check(
            Report::Finished {
                head: head(WallClock::None),
                span: span(),
                output: vec![],
            },
            "/luban/api/v1/task/finish?taskId=t-1&invokeVersion=3&start=1000&end=2000&exitCode=7&dropped=5",
        );
    }

    #[test]
    fn timeout_with_rate_wall_clock() {
        check(
            Report::Timeout { head: head(WallClock::Rate), span: span(), output: vec![] },
            "/luban/api/v1/task/timeout?taskId=t-1&invokeVersion=3&start=1000&end=2000&exitCode=7&dropped=5&currentTime=1700000000000",
        );
    }

    #[test]
    fn failed_with_cron_wall_clock() {
        check(
            Report::Failed {
                head: head(WallClock::Cron { zone_name: "Asia/Shanghai".to_string(), offset_secs: 28800 }),
                span: span(),
                output: vec![],
            },
            "/luban/api/v1/task/error?taskId=t-1&invokeVersion=3&start=1000&end=2000&exitCode=7&dropped=5&currentTime=1700000000000&offset=28800&timeZone=Asia%2FShanghai",
        );
    }

    #[test]
    fn error_escapes_and_truncates_the_description() {
        check(
            Report::Error {
                head: head(WallClock::None),
                span: span(),
                err_code: "UserNotExist".to_string(),
                err_desc: "no user: bob/x".to_string(),
                output: vec![],
            },
            "/luban/api/v1/task/error?taskId=t-1&invokeVersion=3&start=1000&end=2000&exitCode=7&dropped=5&errCode=UserNotExist&errDesc=no+user%3A+bob%2Fx",
        );
        // 254 ASCII bytes then a 2-byte character: the character does not fit in 255.
        let desc = format!("{}é", "a".repeat(254));
        let q = path_and_query(
            &Report::Error {
                head: head(WallClock::None),
                span: span(),
                err_code: "X".to_string(),
                err_desc: desc,
                output: vec![],
            },
            0,
        );
        assert!(q.ends_with(&format!("errDesc={}", "a".repeat(254))), "{q}");
    }

    #[test]
    fn stopped_has_lower_case_exitcode_and_no_wall_clock() {
        check(
            Report::Stopped {
                head: head(WallClock::Rate),
                span: Span::default(),
                result: StopResult::Killed,
                err_desc: None,
                signal: None,
                output: vec![],
            },
            "/luban/api/v1/task/stopped?taskId=t-1&invokeVersion=3&start=0&end=0&exitcode=0&dropped=0&result=killed",
        );
        check(
            Report::Stopped {
                head: head(WallClock::None),
                span: span(),
                result: StopResult::Failed,
                err_desc: Some("kill failed".to_string()),
                signal: None,
                output: vec![],
            },
            "/luban/api/v1/task/stopped?taskId=t-1&invokeVersion=3&start=1000&end=2000&exitcode=7&dropped=5&result=failed&errCode=TerminationException&errDesc=kill+failed",
        );
    }

    #[test]
    fn invalid_escapes_param_and_value() {
        check(
            Report::Invalid {
                head: head(WallClock::Rate),
                param: "cron".to_string(),
                value: "0 0 * * * ? 1999".to_string(),
            },
            "/luban/api/v1/task/invalid?taskId=t-1&invokeVersion=3&param=cron&value=0+0+%2A+%2A+%2A+%3F+1999",
        );
    }

    #[test]
    fn verified() {
        check(
            Report::Verified {
                head: head(WallClock::Rate),
            },
            "/luban/api/v1/task/verified?taskId=t-1&invokeVersion=3",
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(parse_verdict(b"success"), Verdict::Accepted);
        assert_eq!(parse_verdict(b"{}"), Verdict::Accepted);
        assert_eq!(parse_verdict(b"[1]"), Verdict::Accepted);
        assert_eq!(
            parse_verdict(br#"{"errorCode":"TaskNotFound"}"#),
            Verdict::TaskError {
                code: "TaskNotFound".to_string(),
                status: String::new()
            }
        );
        assert_eq!(
            parse_verdict(br#"{"ErrorCode":"TaskStatusInvalid","status":"Terminated"}"#),
            Verdict::TaskError {
                code: "TaskStatusInvalid".to_string(),
                status: "Terminated".to_string()
            }
        );
    }

    use crate::remote::transport::testing::FakeHttp as Scripted;

    fn reporter(
        answers: Vec<Result<HttpResponse, TransportError>>,
    ) -> (Arc<Scripted>, RemoteReporter) {
        let http = Arc::new(Scripted::answering(answers).with_fallback(b"success"));
        let r = RemoteReporter::new(http.clone()).with_retry_pause(Duration::ZERO);
        (http, r)
    }

    #[test]
    fn final_reports_are_retried_and_running_reports_are_not() {
        let (http, r) = reporter((0..3).map(|_| Err(TransportError::Status(500))).collect());
        let fin = Report::Finished {
            head: head(WallClock::None),
            span: span(),
            output: vec![],
        };
        assert_eq!(r.send(&fin).ok(), Some(Verdict::Accepted));
        assert_eq!(http.paths().len(), 4);

        let (http, r) = reporter(vec![Err(TransportError::Status(500))]);
        let running = Report::Running {
            head: head(WallClock::None),
            start_ms: 1,
            output: vec![],
        };
        assert!(matches!(r.send(&running), Err(ReportError::Status(500))));
        assert_eq!(http.paths().len(), 1);
    }

    #[test]
    fn at_shutdown_a_report_gets_one_attempt_and_none_after_a_failure() {
        use crate::remote::spool::{spawn, SpoolConfig};
        let dir = crate::fsutil::tests::TempDir::new("reporter-shutdown");
        let (http, r) = reporter(vec![Err(TransportError::Status(500))]);
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let (gate_tx, _gate) = crossbeam_channel::bounded::<()>(0);
        let limits = SpoolConfig {
            max_reports: 100,
            max_bytes: 1 << 20,
            first_resend_delay: Duration::from_secs(3600),
        };
        let spool = spawn(
            dir.path().to_path_buf(),
            limits,
            http.clone(),
            stop,
            gate_tx,
        )
        .expect("spool");
        let r = r.with_spool(spool.writer.clone());
        let fin = |v: i64| Report::Finished {
            head: ReportHead {
                invoke_version: v,
                ..head(WallClock::None)
            },
            span: span(),
            output: vec![],
        };
        let mut durable = 0;
        r.begin_shutdown();
        assert_eq!(
            r.send_final(&fin(1), &mut || durable += 1).ok(),
            Some(Verdict::Accepted)
        );
        assert_eq!(http.paths().len(), 1, "one attempt, no burst");
        // The server failed once: the rest is not tried, and stays written ahead.
        assert_eq!(
            r.send_final(&fin(2), &mut || durable += 1).ok(),
            Some(Verdict::Accepted)
        );
        assert_eq!(http.paths().len(), 1);
        assert_eq!(durable, 2, "each report is safe before it returns");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names[0].ends_with(".report") && names[1].ends_with(".sending"),
            "{names:?}"
        );
        drop(r);
        drop(spool.writer);
        drop(stop_tx);
        spool.join.join().expect("spool thread");
    }
}
