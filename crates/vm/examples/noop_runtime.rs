//! A native Lambda runtime that does nothing: it answers every event with the event itself.
//! `ember bench vm` uses it as a `provided` function's `bootstrap` to measure what a container
//! costs, without a language runtime's own start-up in the way.
//!
//! It speaks the Runtime API over one keep-alive HTTP/1.1 connection, with the standard library
//! only, so the binary needs nothing from the container but libc.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

fn main() -> Result<(), Box<dyn Error>> {
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API")?;
    let stream = TcpStream::connect(&api)?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        write!(writer, "GET {NEXT} HTTP/1.1\r\nHost: {api}\r\n\r\n")?;
        let (headers, event) = response(&mut reader)?;
        let id = header(&headers, "lambda-runtime-aws-request-id").ok_or("no request id")?;
        write!(
            writer,
            "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\nHost: {api}\r\n\
             Content-Length: {}\r\n\r\n",
            event.len()
        )?;
        writer.write_all(&event)?;
        response(&mut reader)?;
    }
}

/// Reads one response: its header lines and its body (by Content-Length).
fn response(reader: &mut impl BufRead) -> Result<(Vec<String>, Vec<u8>), Box<dyn Error>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err("connection closed".into());
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        headers.push(line);
    }
    let len: usize = header(&headers, "content-length").map_or(Ok(0), str::parse)?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((headers, body))
}

fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}
