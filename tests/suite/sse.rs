//! Tests of the incremental SSE parser: WHATWG examples, line ends, BOM,
//! UTF-8, and every way of splitting each input across pushes.

use netfly::upstream::sse::{Event, Parser};

fn ev(data: &str) -> Event {
    Event {
        event: String::new(),
        data: data.to_owned(),
        error: None,
    }
}

fn named(event: &str, data: &str) -> Event {
    Event {
        event: event.to_owned(),
        data: data.to_owned(),
        error: None,
    }
}

fn err_ev(error: &str, data: &str) -> Event {
    Event {
        event: String::new(),
        data: data.to_owned(),
        error: Some(error.to_owned()),
    }
}

/// Feeds `pieces` in order, then finishes; returns the events and `finish()`.
fn run(pieces: &[&[u8]]) -> (Vec<Event>, bool) {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    for piece in pieces {
        parser.push(piece, &mut out);
    }
    let pending = parser.finish();
    (out, pending)
}

/// Parses `input` one-shot, at every single split point, at every pair of
/// split points (for short inputs), byte by byte, and with empty pushes in
/// between; every way must give `expected` and the same `finish()` answer.
fn check(input: &[u8], expected: &[Event], pending: bool) {
    let one_shot = run(&[input]);
    assert_eq!(
        one_shot.0,
        expected,
        "one shot: {:?}",
        String::from_utf8_lossy(input)
    );
    assert_eq!(
        one_shot.1,
        pending,
        "finish() after one shot: {:?}",
        String::from_utf8_lossy(input)
    );
    for i in 0..=input.len() {
        let (a, b) = input.split_at(i);
        assert_eq!(
            run(&[a, b]),
            one_shot,
            "split at {i}: {:?}",
            String::from_utf8_lossy(input)
        );
    }
    if input.len() <= 80 {
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let pieces = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(run(&pieces), one_shot, "split at {i},{j}");
            }
        }
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        run(&bytes),
        one_shot,
        "byte by byte: {:?}",
        String::from_utf8_lossy(input)
    );
    let mut with_empties: Vec<&[u8]> = Vec::new();
    for byte in input.chunks(1) {
        with_empties.extend_from_slice(&[b"", byte, b""]);
    }
    assert_eq!(
        run(&with_empties),
        one_shot,
        "byte by byte with empty pushes"
    );
}

// ---- WHATWG examples ------------------------------------------------------

#[test]
fn whatwg_stock_example_joins_data_lines() {
    check(
        b"data: YHOO\ndata: +2\ndata: 10\n\n",
        &[ev("YHOO\n+2\n10")],
        false,
    );
}

#[test]
fn whatwg_three_messages() {
    let input = b"data: This is the first message.\n\n\
data: This is the second message, it\n\
data: has two lines.\n\n\
data: This is the third message.\n\n";
    check(
        input,
        &[
            ev("This is the first message."),
            ev("This is the second message, it\nhas two lines."),
            ev("This is the third message."),
        ],
        false,
    );
}

#[test]
fn whatwg_comment_id_and_space_handling() {
    let input = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n";
    check(
        input,
        &[ev("first event"), ev("second event"), ev(" third event")],
        false,
    );
}

#[test]
fn whatwg_empty_data_blocks_and_dropped_last_block() {
    // The first block dispatches "", the second "\n"; the last has no blank
    // line after it and is dropped.
    check(b"data\n\ndata\ndata\n\ndata:", &[ev(""), ev("\n")], true);
}

#[test]
fn whatwg_data_with_and_without_space() {
    check(
        b"data:test\n\ndata: test\n\n",
        &[ev("test"), ev("test")],
        false,
    );
}

#[test]
fn event_types_add_and_remove() {
    let input =
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n";
    check(
        input,
        &[
            named("add", "73857293"),
            named("remove", "2153"),
            named("add", "113411"),
        ],
        false,
    );
}

// ---- fields -----------------------------------------------------------------

#[test]
fn only_one_space_after_colon_is_removed() {
    check(
        b"data:  x\n\ndata:   \n\ndata:\tx\n\n",
        &[ev(" x"), ev("  "), ev("\tx")],
        false,
    );
}

#[test]
fn colons_after_the_first_belong_to_the_value() {
    check(
        b"data: a: b:c\n\ndata:: x\n\n",
        &[ev("a: b:c"), ev(": x")],
        false,
    );
}

#[test]
fn field_without_colon_has_empty_value() {
    // `data` alone appends an empty line; `event` alone resets the type.
    check(
        b"data\ndata: x\n\nevent: a\nevent\ndata: y\n\n",
        &[ev("\nx"), ev("y")],
        false,
    );
}

#[test]
fn empty_data_field_dispatches_empty_string() {
    check(b"data:\n\n", &[ev("")], false);
    check(b"data: \n\n", &[ev("")], false);
}

#[test]
fn multi_line_data_keeps_inner_empty_lines() {
    check(
        b"data: a\ndata:\ndata: b\ndata:\n\n",
        &[ev("a\n\nb\n")],
        false,
    );
}

#[test]
fn blank_lines_without_data_dispatch_nothing() {
    check(b"\n\n\r\n\r\r\n\n", &[], false);
    check(b"event: ping\n\ndata: x\n\n", &[ev("x")], false);
    check(b"id: 7\nretry: 1000\n\n", &[], false);
}

#[test]
fn event_type_is_reset_after_each_blank_line() {
    check(
        b"event: a\ndata: 1\n\ndata: 2\n\n",
        &[named("a", "1"), ev("2")],
        false,
    );
}

#[test]
fn last_event_field_wins() {
    check(
        b"event: a\nevent: b\ndata: x\n\n",
        &[named("b", "x")],
        false,
    );
}

#[test]
fn id_retry_and_unknown_fields_are_ignored() {
    check(
        b"id: 1\nretry: 10\nfoo: bar\ndata: x\nData: y\ndata : z\nEVENT: q\n\n",
        &[ev("x")],
        false,
    );
}

#[test]
fn comments_are_ignored_anywhere() {
    check(
        b":\n: hi\ndata: a\n:data: no\ndata: b\n: x\n\n:\n\n",
        &[ev("a\nb")],
        false,
    );
}

#[test]
fn error_field_is_kept() {
    let json = r#"{"code":500,"message":"model crashed","type":"server_error"}"#;
    let input = format!("error: {json}\n\n");
    check(input.as_bytes(), &[err_ev(json, "")], false);
}

#[test]
fn error_field_with_data_and_event() {
    check(
        b"event: oops\nerror: boom\ndata: d\n\n",
        &[Event {
            event: "oops".into(),
            data: "d".into(),
            error: Some("boom".into()),
        }],
        false,
    );
}

#[test]
fn empty_error_field_still_dispatches() {
    check(b"error\n\n", &[err_ev("", "")], false);
    check(b"error:\n\n", &[err_ev("", "")], false);
}

#[test]
fn error_field_does_not_leak_into_next_event() {
    check(
        b"error: e\n\ndata: x\n\n",
        &[err_ev("e", ""), ev("x")],
        false,
    );
}

// ---- line ends --------------------------------------------------------------

#[test]
fn lf_crlf_and_cr_line_ends() {
    let expected = [ev("a\nb"), ev("c")];
    check(b"data: a\ndata: b\n\ndata: c\n\n", &expected, false);
    check(
        b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n",
        &expected,
        false,
    );
    check(b"data: a\rdata: b\r\rdata: c\r\r", &expected, false);
}

#[test]
fn mixed_line_ends() {
    check(
        b"data: a\rdata: b\r\n\ndata: c\n\r\n",
        &[ev("a\nb"), ev("c")],
        false,
    );
    check(b"data: a\n\rdata: b\r\r\n", &[ev("a"), ev("b")], false);
}

#[test]
fn crlf_is_one_line_end_even_across_pushes() {
    // Were the LF of the split CRLF a blank line of its own, "a" and "b"
    // would be two events.
    let expected = vec![ev("a\nb")];
    assert_eq!(
        run(&[b"data: a\r", b"\ndata: b\r\n\r\n"]),
        (expected.clone(), false)
    );
    assert_eq!(
        run(&[b"data: a\r", b"", b"", b"\ndata: b\r\n\r\n"]),
        (expected.clone(), false)
    );
    assert_eq!(
        run(&[b"data: a\r", b"\n", b"data: b\r", b"\n\r", b"\n"]),
        (expected, false)
    );
    check(b"data: a\r\ndata: b\r\n\r\n", &[ev("a\nb")], false);
}

#[test]
fn cr_at_end_of_push_followed_by_other_line() {
    assert_eq!(
        run(&[b"data: a\r", b"data: b\r\r"]),
        (vec![ev("a\nb")], false)
    );
    assert_eq!(run(&[b"data: a\r", b"\r"]), (vec![ev("a")], false));
    check(b"data: a\rdata: b\r\r", &[ev("a\nb")], false);
}

#[test]
fn cr_cr_is_a_blank_line_not_one_line_end() {
    check(b"data: a\r\rdata: b\r\r", &[ev("a"), ev("b")], false);
}

#[test]
fn lf_cr_is_two_line_ends() {
    check(b"data: a\n\r", &[ev("a")], false);
}

#[test]
fn trailing_cr_at_end_of_stream() {
    check(b"data: a\r\r", &[ev("a")], false);
    check(b"data: a\r", &[], true);
}

// ---- BOM --------------------------------------------------------------------

#[test]
fn leading_bom_is_dropped() {
    check(b"\xEF\xBB\xBFdata: a\n\n", &[ev("a")], false);
    check(b"\xEF\xBB\xBF\n\ndata: a\n\n", &[ev("a")], false);
    check(b"\xEF\xBB\xBF: c\ndata: a\n\n", &[ev("a")], false);
}

#[test]
fn only_one_leading_bom_is_dropped() {
    // The second BOM becomes part of the field name, which is then unknown.
    check(
        b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n",
        &[ev("b")],
        false,
    );
}

#[test]
fn bom_not_at_start_is_kept() {
    check("data: \u{FEFF}x\n\n".as_bytes(), &[ev("\u{FEFF}x")], false);
    check(
        "data: a\n\n\u{FEFF}data: b\n\ndata: c\n\n".as_bytes(),
        &[ev("a"), ev("c")],
        false,
    );
    // After the first push the stream has started: a BOM later is not stripped.
    assert_eq!(
        run(&[b"data: a\n\n", "\u{FEFF}data: b\n\n".as_bytes()]),
        (vec![ev("a")], false)
    );
    assert_eq!(
        run(&[b"\n", "\u{FEFF}data: b\n\n".as_bytes()]),
        (vec![], false)
    );
}

#[test]
fn partial_bom_is_not_a_bom() {
    // The bytes of a broken BOM are the start of the first line: its field
    // name is then not "data" (and decodes to U+FFFD).
    check(b"\xEF\xBBdata: a\n\ndata: b\n\n", &[ev("b")], false);
    check(b"\xEFdata: a\n\ndata: b\n\n", &[ev("b")], false);
    check(b"\xEF\xBB\n\ndata: b\n\n", &[ev("b")], false);
    check(b"\xEF\xBB\xBE\ndata: b\n\n", &[ev("b")], false);
    check(b"\xEF:comment\ndata: b\n\n", &[ev("b")], false);
}

#[test]
fn broken_bom_bytes_are_kept_in_a_line() {
    // "\xEF\xBB" then "\xEF\xBB\xBF" is not a BOM then a BOM: the first two
    // bytes are not followed by \xBF, so the line keeps all five bytes.
    let input = b"\xEF\xBB\xEF\xBB\xBFdata: a\n\ndata: b\n\n";
    check(input, &[ev("b")], false);
}

#[test]
fn bom_alone_or_partial_at_end() {
    check(b"\xEF\xBB\xBF", &[], false);
    check(b"\xEF\xBB", &[], true);
    check(b"\xEF", &[], true);
    check(b"", &[], false);
}

// ---- UTF-8 ------------------------------------------------------------------

#[test]
fn multibyte_utf8_split_at_every_byte() {
    let text = "héllo 世界 🎉";
    let input = format!("event: ünï\ndata: {text}\ndata: {text}\n\n");
    check(
        input.as_bytes(),
        &[named("ünï", &format!("{text}\n{text}"))],
        false,
    );
}

#[test]
fn invalid_utf8_is_replaced_not_panicking() {
    check(b"data: a\xFFb\n\n", &[ev("a\u{FFFD}b")], false);
    // A truncated 3-byte sequence at the end of a line is one U+FFFD.
    check(b"data: \xE4\xB8\n\n", &[ev("\u{FFFD}")], false);
    // Lone continuation bytes, overlong encodings, surrogates.
    check(
        b"data: \x80\xC0\xAF\xED\xA0\x80\n\n",
        &[ev(&"\u{FFFD}".repeat(6))],
        false,
    );
    check(
        b"event: \xFF\ndata: x\n\n",
        &[named("\u{FFFD}", "x")],
        false,
    );
    check(b"error: \xFF\n\n", &[err_ev("\u{FFFD}", "")], false);
}

#[test]
fn utf8_char_cut_by_line_end_does_not_join_next_line() {
    // The cut char's bytes are decoded with their own line only.
    check(
        b"data: \xE4\xB8\ndata: \x96\n\n",
        &[ev("\u{FFFD}\n\u{FFFD}")],
        false,
    );
}

#[test]
fn nul_and_control_chars_are_kept() {
    check(
        b"data: a\x00b\x0Bc\x0Cd\n\n",
        &[ev("a\0b\x0bc\x0cd")],
        false,
    );
}

// ---- end of stream ----------------------------------------------------------

#[test]
fn unterminated_last_event_is_dropped() {
    check(b"data: a\n\ndata: b\n", &[ev("a")], true);
    check(b"data: a\n\ndata: b", &[ev("a")], true);
    check(b"data: a\n\nevent: x\n", &[ev("a")], true);
    check(b"data: a\n\nid: 3\n", &[ev("a")], true);
    check(b"data: a\n\nerror: e\n", &[ev("a")], true);
}

#[test]
fn partial_line_is_pending_even_if_a_comment() {
    check(b"data: a\n\n: keep-alive", &[ev("a")], true);
}

#[test]
fn complete_stream_has_nothing_pending() {
    check(b"data: a\n\n", &[ev("a")], false);
    check(b"data: a\n\n: bye\n", &[ev("a")], false);
    check(b"data: a\n\n\n\n", &[ev("a")], false);
}

#[test]
fn finish_resets_the_parser() {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    parser.push(b"\xEF\xBB\xBFevent: x\ndata: half", &mut out);
    assert!(parser.finish());
    assert!(!parser.finish(), "second finish has nothing pending");
    // A fresh stream: a new BOM is dropped again, the old type and data are gone.
    parser.push(b"\xEF\xBB\xBFdata: b\n\n", &mut out);
    assert_eq!(out, vec![ev("b")]);
    assert!(!parser.finish());
    // A CR pending at finish is forgotten: the next stream's leading LF is a
    // blank line of its own (harmless), not the end of the old line.
    parser.push(b"data: c\r", &mut out);
    assert!(parser.finish());
    parser.push(b"\ndata: d\n\n", &mut out);
    assert_eq!(out, vec![ev("b"), ev("d")]);
}

#[test]
fn default_is_new() {
    let mut parser = Parser::default();
    let mut out = Vec::new();
    parser.push(b"\xEF\xBB\xBFdata: a\n\n", &mut out);
    assert_eq!(out, vec![ev("a")]);
}

#[test]
fn events_are_appended_not_replacing() {
    let mut parser = Parser::new();
    let mut out = vec![ev("already there")];
    parser.push(b"data: a\n\ndata: b\n\n", &mut out);
    assert_eq!(out, vec![ev("already there"), ev("a"), ev("b")]);
}

#[test]
fn realistic_openai_stream() {
    let input = concat!(
        ": OPENROUTER PROCESSING\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\\n\"}}]}\n\n",
        "data: [DONE]\n\n",
    );
    let (events, pending) = run(&[input.as_bytes()]);
    assert!(!pending);
    assert_eq!(events.len(), 4);
    assert!(events[0].data.contains("\"role\":\"assistant\""));
    assert_eq!(
        events[2].data,
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\\n\"}}]}"
    );
    assert_eq!(events[3], ev("[DONE]"));
    check(input.as_bytes(), &events, false);
}

// ---- size and time ----------------------------------------------------------

#[test]
fn huge_single_line_in_pieces_is_linear() {
    // 8 MiB of data in one line, pushed 64 KiB at a time, then the same
    // shape pushed 1 byte at a time (1 MiB): re-scanning the partial line on
    // each push would take ~5e11 steps here and never finish in a test run.
    let size = 8 << 20;
    let mut input = b"data: ".to_vec();
    input.extend(std::iter::repeat(b'x').take(size));
    input.extend_from_slice(b"\n\n");
    let mut parser = Parser::new();
    let mut out = Vec::new();
    for piece in input.chunks(64 * 1024) {
        parser.push(piece, &mut out);
    }
    assert!(!parser.finish());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data.len(), size);
    assert!(out[0].data.bytes().all(|b| b == b'x'));

    let size = 1 << 20;
    let mut input = b"data: ".to_vec();
    input.extend(std::iter::repeat(b'y').take(size));
    input.extend_from_slice(b"\r\n\r\n");
    let mut out = Vec::new();
    for byte in input.chunks(1) {
        parser.push(byte, &mut out);
    }
    assert!(!parser.finish());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].data.len(), size);
}

#[test]
fn many_data_lines_in_one_event_are_linear() {
    // 300k data lines joined into one event: quadratic joining would not finish.
    let lines = 300_000;
    let input = "data: ab\n".repeat(lines) + "\n";
    let (events, pending) = run(&[input.as_bytes()]);
    assert!(!pending);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data.len(), lines * 3 - 1);
    assert!(events[0].data.starts_with("ab\nab\n"));
    assert!(events[0].data.ends_with("\nab"));
}

#[test]
fn many_tiny_events() {
    let n = 200_000;
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!("data: {i}\n\n"));
    }
    let mut parser = Parser::new();
    let mut out = Vec::new();
    for piece in input.as_bytes().chunks(7) {
        parser.push(piece, &mut out);
    }
    assert!(!parser.finish());
    assert_eq!(out.len(), n);
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e.data, i.to_string());
    }
}

#[test]
fn a_huge_line_does_not_break_later_events() {
    let mut input = b"data: ".to_vec();
    input.extend(std::iter::repeat(b'z').take(1 << 20));
    input.extend_from_slice(b"\n\ndata: small\n\n");
    let (events, pending) = run(&input.chunks(4096).collect::<Vec<_>>());
    assert!(!pending);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data.len(), 1 << 20);
    assert_eq!(events[1], ev("small"));
}

// ---- randomized comparison with a naive reference -------------------------------

/// A deliberately simple one-shot reading of the WHATWG rules, to compare the
/// incremental parser against: returns the events and whether something was
/// left unterminated.
fn reference(input: &[u8]) -> (Vec<Event>, bool) {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\n' => {
                lines.push(&input[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&input[start..i]);
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let partial = start < input.len();
    let (mut events, mut event, mut data, mut error, mut dirty) =
        (Vec::new(), String::new(), String::new(), None, false);
    for line in lines {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            if !data.is_empty() || error.is_some() {
                if data.ends_with('\n') {
                    data.pop();
                }
                events.push(Event {
                    event: event.clone(),
                    data: data.clone(),
                    error: error.take(),
                });
            }
            event.clear();
            data.clear();
            dirty = false;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        dirty = true;
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match name {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => event = value.to_owned(),
            "error" => error = Some(value.to_owned()),
            _ => {}
        }
    }
    (events, dirty || partial)
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_inputs_match_the_reference_however_split() {
    const TOKENS: &[&[u8]] = &[
        b"data",
        b"data:",
        b"data: ",
        b"event:",
        b"error:",
        b"id:",
        b":",
        b" ",
        b"x",
        b"\n",
        b"\n",
        b"\r",
        b"\r\n",
        b"\n\n",
        b"\xEF\xBB\xBF",
        b"\xEF\xBB",
        b"\xC3\xA9",
        b"\xF0\x9F\x8E\x89",
        b"\xFF",
        b"\xE4\xB8",
        b"\x96",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut dispatched = 0;
    for round in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(30) {
            input.extend_from_slice(TOKENS[rng.below(TOKENS.len())]);
        }
        let expected = reference(&input);
        dispatched += expected.0.len();
        assert_eq!(run(&[&input]), expected, "round {round}: {input:?}");
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            run(&bytes),
            expected,
            "round {round} byte by byte: {input:?}"
        );
        // Random pieces, empty ones included (they must change nothing).
        let mut pieces = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(rng.below(rest.len() + 1));
            pieces.push(piece);
            rest = tail;
        }
        assert_eq!(
            run(&pieces),
            expected,
            "round {round} in {} pieces: {input:?}",
            pieces.len()
        );
    }
    assert!(
        dispatched > 500,
        "the generator must produce real events, got {dispatched}"
    );
}

// ---- bounds -------------------------------------------------------------------

/// Pushes `pieces` into a parser limited to `limit`; checks after every
/// push that its buffers never pass one line and one event of the limit.
fn run_limited(
    limit: usize,
    pieces: &[&[u8]],
) -> (Vec<Event>, Option<netfly::upstream::sse::Overflow>) {
    let mut parser = Parser::with_limit(limit);
    let mut out = Vec::new();
    for p in pieces {
        parser.push(p, &mut out);
        assert!(
            parser.buffered() <= 2 * limit,
            "buffers {} > 2 × {limit}",
            parser.buffered()
        );
    }
    let overflow = parser.overflow();
    parser.finish();
    (out, overflow)
}

#[test]
fn a_line_over_the_limit_stops_the_parser_however_split() {
    let limit = 64;
    let mut input = b"data: one\n\n".to_vec();
    input.extend_from_slice(b"data: ");
    input.extend(std::iter::repeat(b'x').take(100));
    input.extend_from_slice(b"\n\ndata: after\n\n");
    for k in 0..=input.len() {
        let (events, overflow) = run_limited(limit, &[&input[..k], &input[k..]]);
        assert_eq!(events, vec![ev("one")], "split at {k}");
        let o = overflow.expect("overflow");
        assert_eq!((o.event, o.limit), (false, limit), "split at {k}");
        assert_eq!(o.to_string(), "an SSE line over 64 bytes");
    }
    // A line of exactly the limit (line end excluded) is fine.
    let line = format!("data: {}\n\n", "y".repeat(limit - 6));
    let (events, overflow) = run_limited(limit, &[line.as_bytes()]);
    assert_eq!(overflow, None);
    assert_eq!(events[0].data.len(), limit - 6);
}

#[test]
fn an_event_over_the_limit_stops_the_parser_however_split() {
    let limit = 100;
    // Ten lines of 20 data bytes: each line fits, the event (210 bytes) does not.
    let input = format!(
        "data: a\n\n{}\ndata: b\n\n",
        "data: 01234567890123456789\n".repeat(10)
    );
    let input = input.as_bytes();
    for k in 0..=input.len() {
        let (events, overflow) = run_limited(limit, &[&input[..k], &input[k..]]);
        assert_eq!(events, vec![ev("a")], "split at {k}");
        let o = overflow.expect("overflow");
        assert!(o.event, "split at {k}");
        assert_eq!(o.to_string(), "an SSE event over 100 bytes");
    }
    // Four such lines (84 bytes of data with the joins) fit.
    let input = format!("{}\n", "data: 01234567890123456789\n".repeat(4));
    let (events, overflow) = run_limited(limit, &[input.as_bytes()]);
    assert_eq!(overflow, None);
    assert_eq!(events.len(), 1);
}

#[test]
fn a_huge_line_in_small_reads_never_grows_the_buffers_past_the_limit() {
    // 8 MiB without a newline, 16 KiB at a time, against a 1 MiB bound: the
    // parser stops at the bound and holds no more than it.
    let limit = 1 << 20;
    let piece = vec![b'q'; 16 * 1024];
    let mut parser = Parser::with_limit(limit);
    let mut out = Vec::new();
    parser.push(b"data: ", &mut out);
    for _ in 0..512 {
        parser.push(&piece, &mut out);
        assert!(parser.buffered() <= limit, "{}", parser.buffered());
    }
    assert!(parser.overflow().is_some());
    assert!(out.is_empty());
    // Ignored after the overflow; finish resets the parser (with its limit).
    parser.push(b"\n\ndata: x\n\n", &mut out);
    assert!(out.is_empty());
    parser.finish();
    assert_eq!(parser.overflow(), None);
    parser.push(b"data: x\n\n", &mut out);
    assert_eq!(out, vec![ev("x")]);
}

#[test]
fn random_inputs_under_a_limit_match_the_reference_when_they_fit() {
    // Below the bound, a limited parser is the unlimited one.
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let alphabet: &[u8] = b"data: \n\r:x\xC3\xA9";
    for _ in 0..3_000 {
        let len = rng.below(200);
        let input: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let cut = rng.below(len + 1);
        let pieces: [&[u8]; 2] = [&input[..cut], &input[cut..]];
        let (want, _) = run(&pieces);
        let (got, overflow) = run_limited(1000, &pieces);
        assert_eq!(overflow, None);
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&input));
    }
}
