//! gRPC-Web: browsers cannot speak gRPC (no access to HTTP/2 trailers, nor to framing), so the
//! gRPC-Web protocol carries the same messages over any HTTP version with the trailers as a
//! last length-prefixed frame (flag `0x80`) of the body, and, in its text mode, the whole body
//! base64-encoded. This layer translates both ways, so that gRPC services behind the edge need
//! nothing: a request of `application/grpc-web[-text][+proto]` goes up as
//! `application/grpc[+proto]` over HTTP/2 (its body decoded from base64 in text mode), and the
//! response comes back as `application/grpc-web[-text]` with its trailers framed into the body.
//! Other requests pass untouched.
//!
//! Text mode is decoded and encoded as it streams: base64 is cut on 4-character (3-byte)
//! boundaries, and a client that pads each message separately (`...==` in the middle of the
//! body, as some do) is understood. Following the protocol's spec
//! (grpc/grpc `doc/PROTOCOL-WEB.md`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TE};
use http::{HeaderMap, Request, Response, Version};
use http_body::Frame;
use mesh_core::{Body, BoxError};

/// Which gRPC-Web a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Binary,
    Text,
}

/// The mode and the subtype suffix (`+proto`, `+json`, or none) of a content type.
fn mode(content_type: &[u8]) -> Option<(Mode, &[u8])> {
    if let Some(rest) = content_type.strip_prefix(b"application/grpc-web-text") {
        return Some((Mode::Text, rest));
    }
    content_type
        .strip_prefix(b"application/grpc-web")
        .map(|rest| (Mode::Binary, rest))
}

/// Translates gRPC-Web; see the [module](self) documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcWebLayer;

impl<S> tower::Layer<S> for GrpcWebLayer {
    type Service = GrpcWeb<S>;

    fn layer(&self, inner: S) -> GrpcWeb<S> {
        GrpcWeb { inner }
    }
}

/// See [`GrpcWebLayer`].
#[derive(Clone, Debug)]
pub struct GrpcWeb<S> {
    inner: S,
}

/// Is this a gRPC-Web request?
pub fn is_grpc_web<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .is_some_and(|ct| mode(ct.as_bytes()).is_some())
}

impl<S> tower::Service<Request<Body>> for GrpcWeb<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = GrpcWebFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let translated = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|ct| mode(ct.as_bytes()).map(|(m, suffix)| (m, suffix.to_vec())));
        let Some((mode, suffix)) = translated else {
            return GrpcWebFuture {
                inner: self.inner.call(req),
                mode: None,
            };
        };
        let mut grpc = b"application/grpc".to_vec();
        grpc.extend_from_slice(&suffix);
        let headers = req.headers_mut();
        if let Ok(ct) = HeaderValue::from_bytes(&grpc) {
            headers.insert(CONTENT_TYPE, ct);
        }
        headers.remove(CONTENT_LENGTH);
        headers.insert(TE, HeaderValue::from_static("trailers"));
        // gRPC is HTTP/2 upstream, whatever the browser spoke.
        *req.version_mut() = Version::HTTP_2;
        if mode == Mode::Text {
            req = req.map(|body| {
                Body::boxed(DecodeBase64 {
                    inner: body,
                    pending: BytesMut::new(),
                })
            });
        }
        GrpcWebFuture {
            inner: self.inner.call(req),
            mode: Some((mode, suffix)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcWeb`].
    #[derive(Debug)]
    pub struct GrpcWebFuture<F> {
        #[pin]
        inner: F,
        mode: Option<(Mode, Vec<u8>)>,
    }
}

impl<F, E> Future for GrpcWebFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        let Some((mode, suffix)) = this.mode.take() else {
            return Poll::Ready(Ok(rsp));
        };
        let (mut parts, body) = rsp.into_parts();
        let is_grpc = parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        if !is_grpc {
            // Not a gRPC answer (an HTTP error from somewhere): as it is.
            return Poll::Ready(Ok(Response::from_parts(parts, body)));
        }
        let mut web = match mode {
            Mode::Binary => b"application/grpc-web".to_vec(),
            Mode::Text => b"application/grpc-web-text".to_vec(),
        };
        web.extend_from_slice(&suffix);
        if let Ok(ct) = HeaderValue::from_bytes(&web) {
            parts.headers.insert(CONTENT_TYPE, ct);
        }
        parts.headers.remove(CONTENT_LENGTH);
        let body = Body::boxed(EncodeResponse {
            inner: body,
            text: mode == Mode::Text,
            carry: BytesMut::new(),
            done: false,
        });
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

/// The trailers as gRPC-Web's last frame: flag `0x80`, length, `name: value\r\n` lines.
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + block.len());
    frame.put_u8(0x80);
    frame.put_u32(block.len() as u32);
    frame.extend_from_slice(&block);
    frame.freeze()
}

/// A request body decoded from base64 as it arrives.
struct DecodeBase64 {
    inner: Body,
    /// Characters not yet decoded (fewer than 4, or waiting for more).
    pending: BytesMut,
}

impl DecodeBase64 {
    /// Decodes every whole 4-character group of `pending`; `last`: all of it must go.
    fn decode(&mut self, last: bool) -> Result<Option<Bytes>, BoxError> {
        if self.pending.iter().any(u8::is_ascii_whitespace) {
            let kept: Vec<u8> = self
                .pending
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            self.pending = BytesMut::from(&kept[..]);
        }
        let whole = if last {
            self.pending.len()
        } else {
            self.pending.len() / 4 * 4
        };
        if whole == 0 {
            return Ok(None);
        }
        let text = self.pending.split_to(whole);
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Segments end after each padded group: clients may pad message by message.
        let mut start = 0;
        for group in (0..text.len()).step_by(4) {
            let end = (group + 4).min(text.len());
            if text[group..end].contains(&b'=') || end == text.len() {
                STANDARD
                    .decode_vec(&text[start..end], &mut out)
                    .map_err(|e| format!("gRPC-Web text body: {e}"))?;
                start = end;
            }
        }
        Ok(Some(Bytes::from(out)))
    }
}

impl http_body::Body for DecodeBase64 {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.pending.extend_from_slice(&data);
                        if let Some(decoded) = self.decode(false)? {
                            return Poll::Ready(Some(Ok(Frame::data(decoded))));
                        }
                    }
                    // A request's trailers: gRPC-Web clients send none; dropped.
                    Err(_) => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    return Poll::Ready(self.decode(true)?.map(|d| Ok(Frame::data(d))));
                }
            }
        }
    }
}

/// A gRPC response body as gRPC-Web: its trailers framed in, base64 in text mode.
struct EncodeResponse {
    inner: Body,
    text: bool,
    /// Text mode: bytes not yet encoded (fewer than 3).
    carry: BytesMut,
    done: bool,
}

impl EncodeResponse {
    fn out(&mut self, bytes: Bytes, last: bool) -> Option<Bytes> {
        if !self.text {
            return (!bytes.is_empty()).then_some(bytes);
        }
        self.carry.extend_from_slice(&bytes);
        let whole = if last {
            self.carry.len()
        } else {
            self.carry.len() / 3 * 3
        };
        if whole == 0 {
            return None;
        }
        let chunk = self.carry.split_to(whole);
        Some(Bytes::from(STANDARD.encode(&chunk)))
    }
}

impl http_body::Body for EncodeResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let (bytes, last) = match frame.into_data() {
                        Ok(data) => (data, false),
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => (trailer_frame(&trailers), true),
                            Err(_) => continue,
                        },
                    };
                    self.done = last;
                    if let Some(out) = self.out(bytes, last) {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    self.done = true;
                    return Poll::Ready(self.out(Bytes::new(), true).map(|d| Ok(Frame::data(d))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    /// A gRPC service that echoes the request's message and ends with trailers.
    fn echo()
    -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send>
    + Clone {
        tower::service_fn(|req: Request<Body>| async move {
            assert_eq!(req.headers()[CONTENT_TYPE], "application/grpc+proto");
            assert_eq!(req.headers()[TE], "trailers");
            assert_eq!(req.version(), Version::HTTP_2);
            let message = req.into_body().collect().await?.to_bytes();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("ok"));
            let frames = futures_iter(vec![Frame::data(message), Frame::trailers(trailers)]);
            let mut rsp = Response::new(Body::boxed(http_body_util::StreamBody::new(frames)));
            rsp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/grpc+proto"),
            );
            Ok::<_, BoxError>(rsp)
        })
    }

    fn futures_iter(
        frames: Vec<Frame<Bytes>>,
    ) -> impl tokio_stream::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
        tokio_stream::iter(frames.into_iter().map(Ok))
    }

    fn trailers_frame() -> Vec<u8> {
        let block = b"grpc-status: 0\r\ngrpc-message: ok\r\n";
        let mut frame = vec![0x80];
        frame.extend_from_slice(&(block.len() as u32).to_be_bytes());
        frame.extend_from_slice(block);
        frame
    }

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[tokio::test]
    async fn binary_mode_frames_the_trailers() {
        let svc = GrpcWebLayer.layer(echo());
        let req = Request::builder()
            .header(CONTENT_TYPE, "application/grpc-web+proto")
            .body(Body::full(message(b"hi")))
            .unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        assert_eq!(rsp.headers()[CONTENT_TYPE], "application/grpc-web+proto");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let mut expected = message(b"hi");
        expected.extend_from_slice(&trailers_frame());
        assert_eq!(&body[..], &expected[..]);
    }

    #[tokio::test]
    async fn text_mode_decodes_and_encodes_base64_in_pieces() {
        let svc = GrpcWebLayer.layer(echo());
        // Two separately padded pieces, cut mid-group.
        let piece = STANDARD.encode(message(b"hi"));
        assert!(piece.ends_with('='), "{piece}");
        let encoded = format!("{piece}{piece}");
        let chunks = vec![
            Frame::data(Bytes::from(encoded[..3].to_owned())),
            Frame::data(Bytes::from(encoded[3..13].to_owned())),
            Frame::data(Bytes::from(encoded[13..].to_owned())),
        ];
        let body = Body::boxed(http_body_util::StreamBody::new(futures_iter(chunks)));
        let req = Request::builder()
            .header(CONTENT_TYPE, "application/grpc-web-text+proto")
            .body(body)
            .unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        assert_eq!(
            rsp.headers()[CONTENT_TYPE],
            "application/grpc-web-text+proto"
        );
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        let decoded = STANDARD.decode(&body).unwrap();
        let mut expected = message(b"hi");
        expected.extend_from_slice(&message(b"hi"));
        expected.extend_from_slice(&trailers_frame());
        assert_eq!(decoded, expected);
    }

    #[tokio::test]
    async fn other_requests_pass_untouched() {
        let app = tower::service_fn(|req: Request<Body>| async move {
            Ok::<_, BoxError>(Response::new(Body::full(
                req.version().eq(&Version::HTTP_11).to_string(),
            )))
        });
        let svc = GrpcWebLayer.layer(app);
        let rsp = svc.oneshot(Request::new(Body::Empty)).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "true");
    }
}
