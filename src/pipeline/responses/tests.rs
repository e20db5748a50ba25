use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn error_body(code: &str) -> Vec<u8> {
    let mut b = Vec::new();
    ErrorResponse::error(code, "boom").encode(&mut b);
    b[5..].to_vec()
}

#[test]
fn synthetic_waits_for_earlier_answers() {
    let mut r: Responses<u32> = Responses::new();
    let mut fates = Vec::new();
    let mut out = Vec::new();
    r.sent(Request::Bind, Show::Pass, Some(1));
    r.synthetic(Synthetic::CloseComplete, Some(2), &mut out, &mut |n, f| {
        fates.push((n, f))
    });
    assert!(out.is_empty(), "emitted before the Bind was answered");
    r.server_message(b'2', &[], &mut out, &mut |n, f| fates.push((n, f)))
        .unwrap();
    assert_eq!(out, [msg(b'2', &[]), msg(b'3', &[])].concat());
    assert_eq!(fates, [(1, Fate::Done), (2, Fate::Done)]);
    assert!(r.is_empty());
}

#[test]
fn error_drops_to_sync_newest_first() {
    let mut r: Responses<u32> = Responses::new();
    let mut fates = Vec::new();
    let mut out = Vec::new();
    r.sent(Request::Parse, Show::Pass, Some(1));
    r.sent(Request::Bind, Show::Pass, Some(2));
    r.synthetic(Synthetic::ParseComplete, Some(3), &mut out, &mut |_, _| {});
    r.sent(Request::Sync, Show::Pass, Some(4));
    let e = error_body("42601");
    let skip = r
        .server_message(b'E', &e, &mut out, &mut |n, f| fates.push((n, f)))
        .unwrap();
    assert_eq!(skip, Skipping::No);
    assert_eq!(
        fates,
        [
            (3, Fate::Skipped),
            (2, Fate::Skipped),
            (
                1,
                Fate::Failed {
                    sqlstate: *b"42601"
                }
            )
        ]
    );
    r.server_message(b'Z', b"I", &mut out, &mut |n, f| fates.push((n, f)))
        .unwrap();
    assert_eq!(out, [msg(b'E', &e), msg(b'Z', b"I")].concat());
    assert_eq!(fates.last(), Some(&(4, Fate::Done)));
}

#[test]
fn error_without_sync_queued_reports_skipping() {
    let mut r: Responses<u32> = Responses::new();
    let mut out = Vec::new();
    r.sent(Request::Execute, Show::Pass, None);
    let skip = r
        .server_message(b'E', &error_body("22012"), &mut out, &mut |_, _| {})
        .unwrap();
    assert_eq!(skip, Skipping::UntilSync);
    assert!(r.is_empty());
}

#[test]
fn query_error_is_its_own_and_reported_at_ready() {
    let mut r: Responses<u32> = Responses::new();
    let mut fates = Vec::new();
    let mut out = Vec::new();
    r.sent(Request::Query, Show::Pass, Some(7));
    r.sent(Request::Sync, Show::Pass, None);
    let skip = r
        .server_message(b'E', &error_body("25P02"), &mut out, &mut |n, f| {
            fates.push((n, f))
        })
        .unwrap();
    assert_eq!(skip, Skipping::No);
    assert_eq!(r.len(), 2, "a simple query's error skips nothing");
    r.server_message(b'Z', b"E", &mut out, &mut |n, f| fates.push((n, f)))
        .unwrap();
    assert_eq!(
        fates,
        [(
            7,
            Fate::Failed {
                sqlstate: *b"25P02"
            }
        )]
    );
    assert_eq!(r.status(), b'E');
}

#[test]
fn hidden_housekeeping_shows_nothing() {
    let mut r: Responses<u32> = Responses::new();
    let mut out = Vec::new();
    r.sent(Request::Close, Show::HideAll, None);
    r.sent(Request::Close, Show::HideAll, None);
    r.sent(Request::Sync, Show::HideAll, None);
    r.server_message(b'E', &error_body("XX000"), &mut out, &mut |_, _| {})
        .unwrap();
    r.server_message(b'N', b"x\0", &mut out, &mut |_, _| {})
        .unwrap();
    r.server_message(b'Z', b"I", &mut out, &mut |_, _| {})
        .unwrap();
    assert_eq!(out, msg(b'N', b"x\0"), "only the notice passes");
    assert!(r.is_empty());
}

#[test]
fn unexpected_messages_are_errors() {
    let mut r: Responses<u32> = Responses::new();
    let mut out = Vec::new();
    assert!(matches!(
        r.server_message(b'1', &[], &mut out, &mut |_, _| {}),
        Err(ResponseError { tag: b'1', .. })
    ));
    r.sent(Request::Bind, Show::Pass, None);
    let e = r.server_message(b'1', &[], &mut out, &mut |_, _| {});
    assert_eq!(
        e,
        Err(ResponseError {
            tag: b'1',
            expected: "BindComplete was due"
        })
    );
    assert_eq!(e.unwrap_err().sqlstate(), "08P01");
    // An error with nothing outstanding (a FATAL at shutdown) passes.
    let e = error_body("57P01");
    r.clear();
    r.server_message(b'E', &e, &mut out, &mut |_, _| {})
        .unwrap();
    assert_eq!(out, msg(b'E', &e));
}

#[test]
fn synthetic_command_in_failed_transaction_is_an_error() {
    let mut r: Responses<u32> = Responses::new();
    let mut out = Vec::new();
    let mut fates = Vec::new();
    r.sent(Request::Query, Show::Pass, None);
    r.server_message(b'Z', b"E", &mut out, &mut |_, _| {})
        .unwrap();
    out.clear();
    r.synthetic(
        Synthetic::Command { tag: "DEALLOCATE" },
        Some(1),
        &mut out,
        &mut |n, f| fates.push((n, f)),
    );
    let mut want = Vec::new();
    ErrorResponse::error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
    .encode(&mut want);
    want.extend_from_slice(&msg(b'Z', b"E"));
    assert_eq!(out, want);
    assert_eq!(
        fates,
        [(
            1,
            Fate::Failed {
                sqlstate: *b"25P02"
            }
        )]
    );
}

#[test]
fn streams_only_rows_and_copy_data_of_passed_results() {
    let mut r: Responses<u32> = Responses::new();
    assert!(!r.streams(b'D'));
    r.sent(Request::Execute, Show::Pass, None);
    assert!(r.streams(b'D') && r.streams(b'd'));
    assert!(!r.streams(b'C'));
    let mut r: Responses<u32> = Responses::new();
    r.sent(Request::Bind, Show::Pass, None);
    assert!(!r.streams(b'D'));
}

#[test]
fn syncs_sent_during_copy_in_expect_no_answer() {
    // Bind, Execute, Sync, CopyData, CopyDone, Sync, all sent before
    // the server answered anything: the first Sync reaches the server
    // in copy-in mode and is ignored.
    let mut r: Responses<u32> = Responses::new();
    let mut out = Vec::new();
    r.sent(Request::Bind, Show::Pass, None);
    r.sent(Request::Execute, Show::Pass, None);
    r.sent(Request::Sync, Show::Pass, None);
    r.copy_end();
    r.sent(Request::Sync, Show::Pass, None);
    for (tag, body) in [(b'2', &b""[..]), (b'G', b"\0\0\0"), (b'C', b"COPY 2\0")] {
        r.server_message(tag, body, &mut out, &mut |_, _| {})
            .unwrap();
    }
    assert_eq!(r.len(), 1, "one Sync left: {r:?}");
    r.server_message(b'Z', b"I", &mut out, &mut |_, _| {})
        .unwrap();
    assert!(r.is_empty());
    assert!(!r.in_copy_in());
}

#[test]
fn copy_in_started_before_the_client_ends_it() {
    let mut r: Responses<u32> = Responses::new();
    let mut out = Vec::new();
    r.sent(Request::Execute, Show::Pass, None);
    r.sent(Request::Sync, Show::Pass, None);
    r.server_message(b'G', b"\0\0\0", &mut out, &mut |_, _| {})
        .unwrap();
    assert!(r.in_copy_in());
    assert_eq!(r.len(), 1, "the Sync already sent is ignored");
    r.copy_end();
    assert!(!r.in_copy_in());
    r.sent(Request::Sync, Show::Pass, None);
    r.server_message(b'C', b"COPY 0\0", &mut out, &mut |_, _| {})
        .unwrap();
    r.server_message(b'Z', b"I", &mut out, &mut |_, _| {})
        .unwrap();
    assert!(r.is_empty());
    // A CopyDone with nothing outstanding leaves no mark behind.
    r.copy_end();
    assert!(r.is_empty());
}

#[test]
fn sqlstate_is_found_among_fields() {
    assert_eq!(sqlstate_of(&error_body("26000")), *b"26000");
    assert_eq!(sqlstate_of(b"SERROR\0Mno code\0\0"), *b"00000");
    assert_eq!(sqlstate_of(b"SERR"), *b"00000", "truncated body");
}

mod properties {
    use super::*;
    use crate::protocol::framer::frames;
    use proptest::prelude::*;

    /// One step of a pipeline without errors: a request sent (and whether
    /// the client sees its answer) or an answer pgcorral owes.
    #[derive(Debug, Clone)]
    enum Step {
        Sent(Request, Show),
        Owed(Synthetic),
    }

    /// The server's answer to a request, message by message.
    fn answer(request: Request) -> Vec<(u8, Vec<u8>)> {
        match request {
            Request::Parse => vec![(b'1', vec![])],
            Request::Bind => vec![(b'2', vec![])],
            Request::Close => vec![(b'3', vec![])],
            Request::DescribeStatement => vec![(b't', vec![0, 0]), (b'n', vec![])],
            Request::DescribePortal => vec![(b'T', vec![0, 0])],
            Request::Execute => vec![(b'D', vec![0, 0]), (b'C', b"SELECT 1\0".to_vec())],
            Request::Query => vec![
                (b'T', vec![0, 0]),
                (b'C', b"SELECT 0\0".to_vec()),
                (b'Z', b"I".to_vec()),
            ],
            Request::Sync | Request::FunctionCall => vec![(b'Z', b"I".to_vec())],
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        let request = prop_oneof![
            Just(Request::Parse),
            Just(Request::Bind),
            Just(Request::Close),
            Just(Request::DescribeStatement),
            Just(Request::DescribePortal),
            Just(Request::Execute),
            Just(Request::Sync),
            Just(Request::Query),
        ];
        let show = prop_oneof![
            Just(Show::Pass),
            Just(Show::HideAnswer),
            Just(Show::HideAll)
        ];
        prop_oneof![
            3 => (request, show).prop_map(|(r, s)| Step::Sent(r, s)),
            1 => prop_oneof![Just(Synthetic::ParseComplete), Just(Synthetic::CloseComplete)]
                .prop_map(Step::Owed),
        ]
    }

    proptest! {
        /// Whatever mix of passed, hidden and owed answers, and however the
        /// server's answers interleave with new requests, the client gets
        /// exactly the answers it is owed, in request order, and every note
        /// is settled once as done.
        #[test]
        fn answers_come_out_in_request_order(
            steps in proptest::collection::vec(step(), 0..24),
            // How many requests are sent before the server starts answering.
            lead in 0usize..24,
        ) {
            let mut r: Responses<usize> = Responses::new();
            let mut out = Vec::new();
            let mut fates = Vec::new();
            let mut expect = Vec::new();
            let mut server: std::collections::VecDeque<(u8, Vec<u8>)> = Default::default();
            for (i, step) in steps.iter().enumerate() {
                match step {
                    Step::Sent(request, show) => {
                        r.sent(*request, *show, Some(i));
                        for m in answer(*request) {
                            if *show == Show::Pass {
                                expect.push(m.clone());
                            }
                            server.push_back(m);
                        }
                    }
                    Step::Owed(s) => {
                        expect.push((if *s == Synthetic::ParseComplete { b'1' } else { b'3' }, vec![]));
                        r.synthetic(s.clone(), Some(i), &mut out, &mut |n, f| fates.push((n, f)));
                    }
                }
                // The server answers at its own pace: after `lead` steps,
                // one message per step.
                if i >= lead {
                    if let Some((tag, body)) = server.pop_front() {
                        prop_assert_eq!(
                            r.server_message(tag, &body, &mut out, &mut |n, f| fates.push((n, f))),
                            Ok(Skipping::No)
                        );
                    }
                }
            }
            while let Some((tag, body)) = server.pop_front() {
                prop_assert_eq!(
                    r.server_message(tag, &body, &mut out, &mut |n, f| fates.push((n, f))),
                    Ok(Skipping::No)
                );
            }
            let got: Vec<(u8, Vec<u8>)> = frames(&out).map(|f| (f.tag, f.body.to_vec())).collect();
            prop_assert_eq!(got, expect);
            prop_assert!(r.is_empty());
            let mut settled: Vec<usize> = fates.iter().map(|(n, f)| {
                assert_eq!(*f, Fate::Done);
                *n
            }).collect();
            settled.sort_unstable();
            prop_assert_eq!(settled, (0..steps.len()).collect::<Vec<_>>());
        }
    }
}

fn fields(pairs: &[(u8, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (kind, value) in pairs {
        b.push(*kind);
        b.extend_from_slice(value.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

const STALE_MESSAGE: &str = "cached plan must not change result type";

#[test]
fn stale_plan_is_known_by_code_and_routine() {
    let server = |code, message, routine| {
        fields(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', code),
            (b'M', message),
            (b'F', "plancache.c"),
            (b'L', "730"),
            (b'R', routine),
        ])
    };
    assert!(plan_is_stale(&server(
        "0A000",
        STALE_MESSAGE,
        "RevalidateCachedQuery"
    )));
    assert!(
        plan_is_stale(&server(
            "0A000",
            "gecachter Plan darf den Ergebnistyp nicht ändern",
            "RevalidateCachedQuery"
        )),
        "the message may be translated"
    );
    assert!(plan_is_stale(&server(
        "0A000",
        STALE_MESSAGE,
        "RevalidateCachedPlan"
    )));
    assert!(
        !plan_is_stale(&server("0A000", STALE_MESSAGE, "sql_postrewrite_callback")),
        "a function's own cached plan is not the statement's"
    );
    assert!(!plan_is_stale(&server(
        "0A000",
        "FOR UPDATE is not allowed with aggregate functions",
        "transformLockingClause"
    )));
    assert!(!plan_is_stale(&server(
        "42P01",
        "relation \"t\" does not exist",
        "parserOpenTable"
    )));
    // Without a routine, by the message.
    let bare = |code, message| fields(&[(b'S', "ERROR"), (b'C', code), (b'M', message)]);
    assert!(plan_is_stale(&bare("0A000", STALE_MESSAGE)));
    assert!(!plan_is_stale(&bare("0A000", "something else")));
    assert!(!plan_is_stale(&bare("XX000", STALE_MESSAGE)));
    assert!(!plan_is_stale(b"SERROR\0C0A000\0Mcached plan"), "truncated");
    assert!(!plan_is_stale(b""));
}

#[test]
fn stale_plan_is_the_failed_request_fate() {
    let stale = fields(&[
        (b'S', "ERROR"),
        (b'C', "0A000"),
        (b'M', STALE_MESSAGE),
        (b'R', "RevalidateCachedQuery"),
    ]);
    let mut r: Responses<u32> = Responses::new();
    let mut fates = Vec::new();
    let mut out = Vec::new();
    r.sent(Request::Bind, Show::Pass, Some(1));
    r.sent(Request::Execute, Show::Pass, Some(2));
    r.sent(Request::DescribeStatement, Show::Pass, Some(3));
    r.sent(Request::Sync, Show::Pass, None);
    assert_eq!(r.head(), Some((Request::Bind, Some(&1))));
    let skipping = r
        .server_message(b'E', &stale, &mut out, &mut |n, f| fates.push((n, f)))
        .unwrap();
    assert_eq!(skipping, Skipping::No);
    assert_eq!(out, msg(b'E', &stale), "the client sees the error");
    assert_eq!(
        fates,
        [(3, Fate::Skipped), (2, Fate::Skipped), (1, Fate::Stale)]
    );
    assert_eq!(r.head(), Some((Request::Sync, None)));

    // Any other error is a plain failure.
    let mut r: Responses<u32> = Responses::new();
    fates.clear();
    r.sent(Request::Bind, Show::Pass, Some(1));
    r.server_message(b'E', &error_body("0A000"), &mut out, &mut |n, f| {
        fates.push((n, f))
    })
    .unwrap();
    assert_eq!(
        fates,
        [(
            1,
            Fate::Failed {
                sqlstate: *b"0A000"
            }
        )]
    );
    assert_eq!(r.head(), None);
}
