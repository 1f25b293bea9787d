//! The connection loop's timers at their edges: header_read_timeout for every head (the
//! first, one trickled byte by byte, one started late on a kept-alive connection) and
//! idle_timeout between requests (also after a slow first head and after a long stream); a
//! streaming response is not woken by them.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_header_read_timeout() {
    let mut client = Client::with_timeouts().await;
    client
        .assert_closes_after(HEADER_TIMEOUT, "header_read_timeout")
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_head_sent_one_byte_at_a_time_is_cut_at_header_read_timeout() {
    let mut client = Client::with_timeouts().await;
    let text = get("/trickle");
    let step = Duration::from_secs(1);
    let mut sent = Duration::ZERO;
    for byte in text.as_bytes() {
        // One byte a second: the head is not whole within header_read_timeout.
        if sent + step >= HEADER_TIMEOUT {
            break;
        }
        client.send([*byte]).await;
        tokio::time::advance(step).await;
        sent += step;
        client.assert_quiet("before header_read_timeout").await;
    }
    client
        .assert_closes_after(HEADER_TIMEOUT - sent, "header_read_timeout")
        .await;
    assert!(client.seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_is_closed_at_idle_timeout() {
    let mut client = Client::with_timeouts().await;
    client.send(get("/first")).await;
    assert_eq!(client.output().await, ok_bytes("hello", ""));
    // Idle timeout, not header_read_timeout (shorter), between requests.
    client
        .assert_closes_after(IDLE_TIMEOUT, "idle_timeout")
        .await;
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_counts_from_the_end_of_the_last_response() {
    let mut client = Client::with_timeouts().await;
    // Requests keep the connection busy past several idle periods: each one just in time.
    for round in 0..3 {
        if round > 0 {
            tokio::time::advance(IDLE_TIMEOUT - MS).await;
            client.assert_quiet("within idle_timeout").await;
        }
        client.send(get("/busy")).await;
        assert_eq!(client.output().await, ok_bytes("hello", ""), "{round}");
    }
    client
        .assert_closes_after(IDLE_TIMEOUT, "idle_timeout after the last response")
        .await;
}

/// A slowloris client must not get idle_timeout to finish a head it starts after a pause on
/// a kept-alive connection.
#[tokio::test(start_paused = true)]
async fn a_head_started_late_on_a_kept_alive_connection_gets_header_read_timeout() {
    let mut client = Client::with_timeouts().await;
    client.send(get("/first")).await;
    assert_eq!(client.output().await, ok_bytes("hello", ""));
    // Idle past header_read_timeout, well within idle_timeout.
    tokio::time::advance(HEADER_TIMEOUT * 2).await;
    client.assert_quiet("idle").await;
    client.send("GET /late HTTP/1.1\r\nHost: h1.test\r\n").await;
    client
        .assert_closes_after(HEADER_TIMEOUT, "header_read_timeout after the head started")
        .await;
    assert_eq!(client.seen(), ["GET /first"]);
}

/// The other direction of the same timer: idle_timeout holds after a first head that took
/// longer than idle_timeout to arrive (header_read_timeout is the longer one here).
#[tokio::test(start_paused = true)]
async fn idle_timeout_holds_after_a_slow_first_head() {
    let (header, idle) = (Duration::from_secs(60), Duration::from_secs(10));
    let mut client = Client::start(settings(header, idle)).await;
    client
        .send("GET /slow-head HTTP/1.1\r\nHost: h1.test\r\n")
        .await;
    tokio::time::advance(idle * 3).await;
    client.assert_quiet("a head in progress").await;
    client.send("\r\n").await;
    assert_eq!(client.output().await, ok_bytes("hello", ""));
    client.assert_closes_after(idle, "idle_timeout").await;
}

/// A response that streams past both timeouts is not woken by the head timer (it has nothing
/// to time then, and each such wake-up polls the whole connection for nothing), and
/// idle_timeout counts again from the stream's end.
#[tokio::test(start_paused = true)]
async fn a_long_stream_is_not_woken_by_the_head_timer_and_idle_timeout_follows_it() {
    let mut client = Client::with_timeouts().await;
    client.send(get("/counted-stream")).await;
    assert_eq!(
        client.output().await,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n"
    );
    settle().await;
    let polls = client.script.stream_polls.load(Ordering::SeqCst);
    // Past header_read_timeout (which the head timer was armed for) and idle_timeout.
    tokio::time::advance(HEADER_TIMEOUT + MS).await;
    client
        .assert_quiet("streaming past header_read_timeout")
        .await;
    tokio::time::advance(IDLE_TIMEOUT * 2).await;
    client.assert_quiet("streaming past idle_timeout").await;
    assert_eq!(
        client.script.stream_polls.load(Ordering::SeqCst),
        polls,
        "the waiting body was polled again with nothing new: the task was woken for nothing"
    );
    client.script.stream_gate.notify_one();
    assert_eq!(client.output().await, "3\r\ntwo\r\n0\r\n\r\n");
    client
        .assert_closes_after(IDLE_TIMEOUT, "idle_timeout after the stream")
        .await;
}
