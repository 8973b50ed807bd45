//! Streaming calls over HTTP/1, framed as grpc-gateway frames them: the request body is a
//! sequence of JSON request messages (read as they arrive), the response is one
//! `{"result":...}` line per message, flushed as it is produced, kept open as long as the
//! service's stream.
//!
//! The services take a `tonic::Streaming`, so the decoded requests are re-encoded as gRPC frames
//! into an in-process body: the service sees exactly what a gRPC client would have sent. The end
//! of the HTTP body (or a request that does not decode) half-closes that stream, as
//! grpc-gateway's `CloseSend` does.

use std::convert::Infallible;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::json::{self, DecodeError};

/// Requests buffered between the HTTP body and the service.
const REQUEST_BUFFER: usize = 16;

/// JSON values read one after another from an HTTP request body, each as soon as it is whole.
pub(crate) struct JsonReader {
    body: BodyDataStream,
    buf: Vec<u8>,
    ended: bool,
    /// The most bytes one value may take.
    limit: usize,
}

impl JsonReader {
    /// A reader over `body` whose values are at most `limit` bytes each.
    pub(crate) fn new(body: Body, limit: usize) -> Self {
        JsonReader {
            body: body.into_data_stream(),
            buf: Vec::new(),
            ended: false,
            limit,
        }
    }

    /// The next value; `None` once the body has ended (blank space aside).
    pub(crate) async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, DecodeError> {
        loop {
            let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<T>();
            match values.next() {
                Some(Ok(value)) => {
                    let used = values.byte_offset();
                    self.buf.drain(..used);
                    return Ok(Some(value));
                }
                Some(Err(e)) if !e.is_eof() || self.ended => return Err(e.into()),
                None if self.ended => return Ok(None),
                // Incomplete: wait for more of the body.
                _ => {}
            }
            if self.buf.len() > self.limit {
                return Err(DecodeError::TooLarge(self.limit));
            }
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => self.ended = true,
            }
        }
    }
}

/// One gRPC message frame (uncompressed) for `msg`.
fn frame<T: prost::Message>(msg: &T) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// The request stream a service receives for an HTTP body: `first` (if the body held a message),
/// then every further message as it arrives. The stream half-closes when the body ends or holds
/// something that is not a request.
pub(crate) fn requests<T>(first: Option<T>, mut rest: JsonReader) -> Streaming<T>
where
    T: prost::Message + DeserializeOwned + Default + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(REQUEST_BUFFER);
    if let Some(first) = first {
        // The channel is empty and owned here: this cannot fail.
        let _ = tx.try_send(Ok(frame(&first)));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = tx.closed() => break,
                    next = rest.next::<T>() => next,
                };
                match next {
                    Ok(Some(msg)) => {
                        if tx.send(Ok(frame(&msg))).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "gateway: request stream ended by a bad message");
                        break;
                    }
                }
            }
        });
    }
    let body = Body::from_stream(ReceiverStream::new(rx));
    Streaming::new_request(tonic_prost::ProstDecoder::<T>::default(), body, None, None)
}

/// Reads the first request of a streaming call (each request at most `limit` bytes of JSON): a
/// body that does not start with one is refused
/// as grpc-gateway refuses it (500, Unknown); an empty body opens a half-closed stream.
pub(crate) async fn open<T>(body: Body, limit: usize) -> Result<Streaming<T>, Response>
where
    T: prost::Message + DeserializeOwned + Default + Send + 'static,
{
    let mut reader = JsonReader::new(body, limit);
    match reader.next::<T>().await {
        Ok(first) => Ok(requests(first, reader)),
        Err(e) => Err(json::response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json::error_body(Code::Unknown, &e.to_string()),
        )),
    }
}

/// The HTTP response for a streaming call's outcome. Nothing is sent before the service's first
/// message, so a stream that fails at once gets its error's HTTP status; later messages follow
/// one per line, and an error ends the stream with an error chunk.
pub(crate) async fn reply<S, T>(outcome: Result<tonic::Response<S>, Status>) -> Response
where
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
    T: Serialize + Send + 'static,
{
    let mut stream = match outcome {
        Ok(resp) => resp.into_inner(),
        Err(status) => return json::status_response(&status),
    };
    let first = match stream.next().await {
        None => return json::response(StatusCode::OK, Body::empty()),
        Some(Err(status)) => {
            return json::response(
                json::http_status(status.code()),
                json::stream_error_chunk(&status),
            )
        }
        Some(Ok(first)) => first,
    };
    let lines = futures_util::stream::once(std::future::ready(Ok(first)))
        .chain(stream)
        .scan(false, |failed, item| {
            if *failed {
                return std::future::ready(None);
            }
            let chunk = match item {
                Ok(msg) => match json::result_chunk(&msg) {
                    Ok(line) => line + "\n",
                    Err(e) => {
                        *failed = true;
                        json::stream_error_chunk(&Status::internal(e.to_string()))
                    }
                },
                Err(status) => {
                    *failed = true;
                    json::stream_error_chunk(&status)
                }
            };
            std::future::ready(Some(Ok::<_, Infallible>(Bytes::from(chunk))))
        });
    json::ok_response(Body::from_stream(lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv_proto::etcdserverpb::LeaseKeepAliveRequest;

    fn body_of(chunks: &[&str]) -> Body {
        let items: Vec<Result<Bytes, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c.as_bytes())))
            .collect();
        Body::from_stream(futures_util::stream::iter(items))
    }

    #[tokio::test]
    async fn values_split_across_chunks_are_read_whole() {
        let mut r = JsonReader::new(
            body_of(&[r#"{"ID":"#, r#"1}  {"ID""#, r#":"2"}"#, " \n"]),
            1024,
        );
        let a: LeaseKeepAliveRequest = r.next().await.unwrap().unwrap();
        let b: LeaseKeepAliveRequest = r.next().await.unwrap().unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        assert!(r.next::<LeaseKeepAliveRequest>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_value_above_the_limit_is_refused_without_waiting_for_its_end() {
        let big = format!(r#"{{"ID":1,"pad":"{}"#, "x".repeat(64));
        let mut r = JsonReader::new(body_of(&[&big, "\"}"]), 32);
        assert!(matches!(
            r.next::<LeaseKeepAliveRequest>().await,
            Err(DecodeError::TooLarge(32))
        ));
    }

    #[tokio::test]
    async fn a_truncated_value_is_an_error() {
        let mut r = JsonReader::new(body_of(&[r#"{"ID":1"#]), 1024);
        assert!(r.next::<LeaseKeepAliveRequest>().await.is_err());
    }

    #[tokio::test]
    async fn the_service_sees_every_message_then_the_end() {
        let r = JsonReader::new(body_of(&[r#"{"ID":2}{"ID":3}"#]), 1024);
        let mut s = requests(Some(LeaseKeepAliveRequest { id: 1 }), r);
        let mut ids = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            ids.push(m.id);
        }
        assert_eq!(ids, [1, 2, 3]);
    }
}
