//! The protobuf codec of the generated clients and servers: prost's, except that a
//! message that does not decode (bad wire format, invalid UTF-8 in a string field) is
//! INVALID_ARGUMENT — the caller sent something wrong — rather than prost's INTERNAL.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ZtCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ZtCodec<T, U> {
    fn default() -> Self {
        ZtCodec(PhantomData)
    }
}

impl<T, U> Codec for ZtCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ZtDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ZtDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder with INVALID_ARGUMENT for undecodable messages.
#[derive(Debug, Clone)]
pub struct ZtDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ZtDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            if s.code() == tonic::Code::Internal {
                Status::invalid_argument(format!("the message does not decode: {}", s.message()))
            } else {
                s
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
