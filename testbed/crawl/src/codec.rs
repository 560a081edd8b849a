//! FIND_NODE as a `request_response` codec: one request and one answer per stream, each a
//! protobuf [`Message`] behind an unsigned-varint length, as libp2p-kad frames them.
//!
//! rust-libp2p has no public single-peer FIND_NODE (its `get_closest_peers` is an iterative
//! lookup), so the crawler speaks the protocol itself. It only ever sends requests: the codec
//! refuses to read one, and the behaviour is configured outbound-only, so the crawler does not
//! advertise `/ipfs/kad/1.0.0` and no node puts it in its table.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use prost::Message as _;

use crate::proto::Message;

/// The IPFS DHT's protocol, the one kad-node and go-/js-/py-libp2p servers speak.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/kad/1.0.0");

/// The largest answer read: 20 peers with a few addresses each fit in 4 KiB; go-libp2p allows
/// 4 MiB, rust-libp2p 16 KiB. Larger is a broken or hostile node.
pub const MAX_MESSAGE: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct FindNodeCodec;

impl libp2p::request_response::Codec for FindNodeCodec {
    type Protocol = StreamProtocol;
    type Request = Message;
    type Response = Message;

    async fn read_request<T>(&mut self, _: &Self::Protocol, _: &mut T) -> io::Result<Message>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the crawler answers no requests",
        ))
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Message>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        request: Message,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request.encode_length_delimited_to_vec())
            .await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        _: &mut T,
        _: Message,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the crawler answers no requests",
        ))
    }
}

/// Reads one length-prefixed message.
pub async fn read_message<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Message> {
    let len = unsigned_varint::aio::read_usize(&mut *io)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("length prefix: {e}")))?;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("answer of {len} bytes, over the {MAX_MESSAGE}-byte limit"),
        ));
    }
    let mut buf = vec![0; len];
    io.read_exact(&mut buf).await?;
    Message::decode(buf.as_slice()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a kad message: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_framed_message_reads_back() {
        let msg = Message::find_node(vec![7; 40]);
        let bytes = msg.encode_length_delimited_to_vec();
        let read = read_message(&mut futures::io::Cursor::new(bytes))
            .await
            .expect("reads");
        assert_eq!(read, msg);
    }

    #[tokio::test]
    async fn an_oversized_or_cut_answer_is_an_error_not_a_panic() {
        let mut huge = Vec::new();
        unsigned_varint::encode::usize(
            MAX_MESSAGE + 1,
            &mut unsigned_varint::encode::usize_buffer(),
        )
        .clone_into(&mut huge);
        let err = read_message(&mut futures::io::Cursor::new(huge))
            .await
            .expect_err("too big");
        assert!(err.to_string().contains("limit"), "{err}");

        let mut cut = Message::find_node(vec![7; 40]).encode_length_delimited_to_vec();
        cut.truncate(10);
        assert!(
            read_message(&mut futures::io::Cursor::new(cut))
                .await
                .is_err()
        );

        let garbage = vec![3, 0xFF, 0xFF, 0xFF];
        let err = read_message(&mut futures::io::Cursor::new(garbage))
            .await
            .expect_err("garbage");
        assert!(err.to_string().contains("not a kad message"), "{err}");
    }
}
