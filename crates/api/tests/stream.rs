//! `Client::open_stream` against a real unix-socket server: the head arrives
//! before the call returns, chunked lines come out whole, a stopper ends a
//! reader blocked on a quiet stream, and a broken chunk is an error.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

use ciliate_api::{Client, ClientError};

/// Serves one connection: reads the request head, then runs `answer`.
fn serve(answer: impl FnOnce(UnixStream) + Send + 'static) -> (tempfile::TempDir, Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        while reader.read_line(&mut line).expect("read") > 2 {
            line.clear();
        }
        answer(stream);
    });
    (dir, Client::new(path))
}

fn chunk(text: &str) -> String {
    format!("{:x}\r\n{text}\r\n", text.len())
}

#[test]
fn lines_split_across_chunks_come_out_whole_and_stop_ends_a_quiet_stream() {
    let (released_tx, released_rx) = mpsc::channel::<()>();
    let (_dir, client) = serve(move |mut s| {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(chunk("{\"a\":1}\n{\"b\"").as_bytes()).unwrap();
        s.write_all(chunk(":2}\n\n").as_bytes()).unwrap();
        // Then nothing more until the reader is stopped.
        let _ = released_rx.recv_timeout(Duration::from_secs(20));
    });
    let mut stream = client
        .open_stream("/v1/monitor", Some(Duration::from_secs(5)))
        .expect("head arrives");
    assert_eq!(stream.next_line().unwrap().as_deref(), Some("{\"a\":1}"));
    assert_eq!(stream.next_line().unwrap().as_deref(), Some("{\"b\":2}"));
    let stopper = stream.stopper();
    let reader = std::thread::spawn(move || stream.next_line());
    std::thread::sleep(Duration::from_millis(100));
    stopper.stop();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(reader.join()));
    let last = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the stopped reader returns")
        .expect("no panic");
    assert!(matches!(last, Ok(None)), "{last:?}");
    drop(released_tx);
}

#[test]
fn an_error_status_and_a_broken_chunk_are_errors() {
    let (_dir, client) = serve(|mut s| {
        let body = "{\"error\":\"no such thing\"}";
        let head = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
    });
    match client.open_stream("/v1/nothing", Some(Duration::from_secs(5))) {
        Err(ClientError::Status {
            status, message, ..
        }) => {
            assert_eq!(status, 404);
            assert_eq!(message, "no such thing");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a 404 opened a stream"),
    }

    let (_dir, client) = serve(|mut s| {
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        s.write_all(head.as_bytes()).unwrap();
    });
    let mut stream = client
        .open_stream("/v1/monitor", Some(Duration::from_secs(5)))
        .expect("head arrives");
    match stream.next_line() {
        Err(ClientError::Protocol { detail, .. }) => assert!(detail.contains("chunk"), "{detail}"),
        other => panic!("a bad chunk size gave {other:?}"),
    }
}
