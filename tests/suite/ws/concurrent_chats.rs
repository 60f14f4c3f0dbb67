//! Several chats at once (PROTOCOL §1 `--max-streams-per-connection`, §3):
//! interleaved chats on one socket stay apart, one too many is `busy`, a
//! duplicate id in flight is refused; and two hundred sockets at once all
//! get their exact text.

use std::time::Duration;

use futures_util::future::join_all;

use crate::support::*;

#[actix_web::test]
async fn four_interleaved_chats_stay_apart() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(ms(10))], &[]).await;
    let texts = [
        ("a", "alpha one two three four five six seven"),
        ("b", "bravo uno dos tres cuatro cinco seis"),
        ("c", "charlie eins zwei drei vier fünf sechs"),
        ("d", "delta 一 二 三 四 五 六 七 🎉"),
    ];
    for (id, text) in texts {
        ws.send_chat(id, text).await;
    }
    for (id, text) in texts {
        let frames = ws.chat_until_terminal(id, WAIT).await;
        expect_done(&frames);
        assert_eq!(content_of(&frames), text, "chat {id}");
    }
    for (id, _) in texts {
        ws.expect_silence_for(id, ms(100)).await;
    }
    assert!(ws.backlog().is_empty(), "stray frames: {:?}", ws.backlog());
    assert_eq!(fake.attempts(), 4);
    gw.stop(false).await;
}

#[actix_web::test]
async fn fifth_chat_in_flight_is_busy() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(ms(600))], &[]).await;
    assert_eq!(ws.hello()["max_streams"], 4);
    let ids = ["c1", "c2", "c3", "c4"];
    for id in ids {
        ws.send_chat(id, &format!("{id}-first {id}-second")).await;
    }
    for id in ids {
        ws.expect_type(id, "delta", WAIT).await;
    }
    ws.send_chat("c5", "too many").await;
    let busy = ws
        .next_matching(WAIT, |v| v["type"] == "error" && v["id"] == "c5")
        .await
        .unwrap_or_else(|| panic!("no busy error for c5; backlog {:?}", ws.backlog()));
    assert_eq!(busy["code"], "busy", "{busy}");
    assert_eq!(busy["retryable"], true, "{busy}");
    ws.expect_silence_for("c5", ms(100)).await;
    for id in ids {
        let rest = ws.chat_until_terminal(id, WAIT).await;
        expect_done(&rest);
        // The first delta was taken out above; the rest completes the text.
        assert_eq!(
            format!("{id}-first {}", content_of(&rest)),
            format!("{id}-first {id}-second"),
            "chat {id} unaffected"
        );
    }
    assert_eq!(fake.attempts(), 4, "the busy chat never went upstream");
    // The slots are free again.
    let frames = ws.chat("c6", "again", WAIT).await;
    assert_eq!(content_of(&frames), "again");
    gw.stop(false).await;
}

#[actix_web::test]
async fn duplicate_id_in_flight_is_rejected_and_the_running_chat_untouched() {
    let (fake, gw, mut ws) = fake_gateway_client(vec![Reply::echo(ms(400))], &[]).await;
    ws.send_chat("d1", "one two").await;
    ws.expect_type("d1", "delta", WAIT).await;
    ws.send_chat("d1", "duplicate").await;
    let err = ws
        .next_unattributed(WAIT)
        .await
        .expect("an error with id null for the duplicate");
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "bad_request", "{err}");
    assert_eq!(err["retryable"], false, "{err}");
    let rest = ws.chat_until_terminal("d1", WAIT).await;
    expect_done(&rest);
    assert_eq!(content_of(&rest), "two", "the running chat is untouched");
    ws.expect_silence_for("d1", QUIET).await;
    assert_eq!(fake.attempts(), 1);
    // Once finished, the id may be used again.
    let frames = ws.chat("d1", "reuse", WAIT).await;
    assert_eq!(content_of(&frames), "reuse");
    gw.stop(false).await;
}

#[actix_web::test]
async fn two_hundred_sockets_at_once_all_exact() {
    const N: usize = 200;
    let (fake, gw) = fake_gateway(vec![Reply::echo(ms(5))], &[]).await;
    let clients = join_all((0..N).map(|_| WsClient::connect(gw.addr))).await;
    let results = join_all(
        clients
            .into_iter()
            .enumerate()
            .map(|(i, mut ws)| async move {
                let text = format!("client {i} says hello to the gateway ✓");
                ws.send_chat("m", &text).await;
                let frames = ws.chat_until_terminal("m", Duration::from_secs(60)).await;
                (text, frames, ws)
            }),
    )
    .await;
    for (text, frames, _ws) in &results {
        expect_done(frames);
        assert_eq!(&content_of(frames), text);
    }
    assert_eq!(fake.attempts(), N);
    drop(results);
    gw.stop(false).await;
}
