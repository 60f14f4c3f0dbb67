//! An upstream 4xx is `upstream_rejected` (PROTOCOL §3 error table, §4):
//! never retried, the upstream's message passed on.

use crate::support::*;

#[actix_web::test]
async fn upstream_400_is_rejected_once_with_its_message() {
    let msg = "Invalid value for 'temperature': decimal above maximum value.";
    let (frames, fake) =
        run_chat(vec![Reply::error_json(400, msg)], &["--max-attempts", "5"]).await;
    let err = expect_error(&frames, "upstream_rejected");
    assert_eq!(err["retryable"], false);
    assert!(
        message_of(err).contains(msg),
        "the upstream's message is passed on: {err}"
    );
    assert_eq!(fake.attempts(), 1, "4xx is never retried");
    assert!(of_type(&frames, "retry").is_empty());
    assert!(of_type(&frames, "start").is_empty(), "no start without 2xx");
}

#[actix_web::test]
async fn other_4xx_are_rejected_too() {
    for status in [403u16, 404, 422] {
        let (frames, fake) = run_chat(
            vec![Reply::error_json(status, &format!("nope {status}"))],
            &["--max-attempts", "3"],
        )
        .await;
        let err = expect_error(&frames, "upstream_rejected");
        assert!(message_of(err).contains(&format!("nope {status}")));
        assert_eq!(fake.attempts(), 1, "status {status}");
    }
}
