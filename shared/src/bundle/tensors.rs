//! Typed access to the bundle's safetensors members: every tensor is read with the dtype and
//! shape the format prescribes, and a member must hold exactly the tensors expected, so a member
//! that parses but does not fit (an edited shape, a missing layer, a stray tensor) is refused with
//! its member and tensor name.

use std::collections::BTreeSet;

use half::f16;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::BundleError;

/// One tensor to write: little-endian bytes of `shape.product()` elements of `dtype`.
#[derive(Debug, Clone)]
pub struct OwnedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(name: impl Into<String>, shape: &[usize], v: &[f32]) -> Self {
        Self::raw(
            name,
            Dtype::F32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    pub fn f16(name: impl Into<String>, shape: &[usize], v: &[f16]) -> Self {
        Self::raw(
            name,
            Dtype::F16,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    pub fn i8(name: impl Into<String>, shape: &[usize], v: &[i8]) -> Self {
        Self::raw(name, Dtype::I8, shape, v.iter().map(|&x| x as u8).collect())
    }

    pub fn u8(name: impl Into<String>, shape: &[usize], v: &[u8]) -> Self {
        Self::raw(name, Dtype::U8, shape, v.to_vec())
    }

    fn raw(name: impl Into<String>, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data,
        }
    }
}

/// Serialise tensors as one safetensors file (deterministic: safetensors orders the header).
pub fn serialize(member: &str, tensors: &[OwnedTensor]) -> Result<Vec<u8>, BundleError> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| BundleError::tensor(member, &t.name, format!("cannot write: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| BundleError::tensor(member, "*", format!("cannot write: {e}")))
}

/// A parsed safetensors member.
#[derive(Debug)]
pub struct TensorFile<'a> {
    member: &'static str,
    st: SafeTensors<'a>,
}

impl<'a> TensorFile<'a> {
    pub fn parse(member: &'static str, bytes: &'a [u8]) -> Result<Self, BundleError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| BundleError::Tensor {
            member: member.into(),
            tensor: "*".into(),
            why: format!("not a safetensors file: {e}"),
        })?;
        Ok(Self { member, st })
    }

    /// Refuse tensors other than `expected` (and report a missing one first).
    pub fn expect_exactly(&self, expected: &BTreeSet<String>) -> Result<(), BundleError> {
        let present: BTreeSet<String> = self.st.names().into_iter().map(String::from).collect();
        if let Some(missing) = expected.difference(&present).next() {
            return Err(BundleError::tensor(self.member, missing, "missing"));
        }
        if let Some(extra) = present.difference(expected).next() {
            return Err(BundleError::tensor(
                self.member,
                extra,
                "not part of the format",
            ));
        }
        Ok(())
    }

    fn view(
        &self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
    ) -> Result<TensorView<'a>, BundleError> {
        let v = self
            .st
            .tensor(name)
            .map_err(|_| BundleError::tensor(self.member, name, "missing"))?;
        if v.dtype() != dtype {
            return Err(BundleError::tensor(
                self.member,
                name,
                format!("is {:?}; expected {dtype:?}", v.dtype()),
            ));
        }
        if v.shape() != shape {
            return Err(BundleError::tensor(
                self.member,
                name,
                format!("has shape {:?}; expected {shape:?}", v.shape()),
            ));
        }
        Ok(v)
    }

    /// The shape of `name`, for tensors whose leading dimension the manifest gives.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>, BundleError> {
        self.st
            .tensor(name)
            .map(|v| v.shape().to_vec())
            .map_err(|_| BundleError::tensor(self.member, name, "missing"))
    }

    /// Little-endian floats of `N` bytes each, decoded with `decode`, all finite.
    fn floats<T, const N: usize>(
        &self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        decode: fn([u8; N]) -> T,
        finite: fn(&T) -> bool,
    ) -> Result<Vec<T>, BundleError> {
        let v = self.view(name, dtype, shape)?;
        let out: Vec<T> = v
            .data()
            .chunks_exact(N)
            .map(|c| decode(c.try_into().expect("chunks of N bytes")))
            .collect();
        if !out.iter().all(finite) {
            return Err(BundleError::tensor(
                self.member,
                name,
                "contains NaN or infinity",
            ));
        }
        Ok(out)
    }

    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, BundleError> {
        self.floats(name, Dtype::F32, shape, f32::from_le_bytes, |x| {
            x.is_finite()
        })
    }

    pub fn f16(&self, name: &str, shape: &[usize]) -> Result<Vec<f16>, BundleError> {
        self.floats(name, Dtype::F16, shape, f16::from_le_bytes, |x| {
            x.is_finite()
        })
    }

    pub fn i8(&self, name: &str, shape: &[usize]) -> Result<Vec<i8>, BundleError> {
        let v = self.view(name, Dtype::I8, shape)?;
        Ok(v.data().iter().map(|&b| b as i8).collect())
    }

    pub fn u8(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>, BundleError> {
        Ok(self.u8_in_place(name, shape)?.to_vec())
    }

    /// [`Self::u8`] without the copy: the tensor's bytes where they lie in the member.
    pub fn u8_in_place(&self, name: &str, shape: &[usize]) -> Result<&'a [u8], BundleError> {
        Ok(self.view(name, Dtype::U8, shape)?.data())
    }

    pub fn dtype(&self, name: &str) -> Result<Dtype, BundleError> {
        self.st
            .tensor(name)
            .map(|v| v.dtype())
            .map_err(|_| BundleError::tensor(self.member, name, "missing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_round_trip_and_errors_name_the_tensor() {
        let bytes = serialize(
            "t.safetensors",
            &[
                OwnedTensor::f32("a", &[2, 2], &[1.0, -2.0, 3.5, 0.0]),
                OwnedTensor::i8("q", &[3], &[-127, 0, 127]),
                OwnedTensor::f16("h", &[1], &[f16::from_f32(0.5)]),
                OwnedTensor::u8("u", &[2], &[7, 255]),
            ],
        )
        .unwrap();
        let f = TensorFile::parse("t.safetensors", &bytes).unwrap();
        assert_eq!(f.f32("a", &[2, 2]).unwrap(), [1.0, -2.0, 3.5, 0.0]);
        assert_eq!(f.i8("q", &[3]).unwrap(), [-127, 0, 127]);
        assert_eq!(f.f16("h", &[1]).unwrap()[0].to_f32(), 0.5);
        assert_eq!(f.u8("u", &[2]).unwrap(), [7, 255]);
        let e = f.f32("a", &[4]).unwrap_err().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("`a`") && e.contains("[4]"),
            "{e}"
        );
        let e = f.f32("q", &[3]).unwrap_err().to_string();
        assert!(e.contains("I8") && e.contains("F32"), "{e}");
        let want: BTreeSet<String> = ["a", "q", "h"].map(String::from).into();
        let e = f.expect_exactly(&want).unwrap_err().to_string();
        assert!(
            e.contains("`u`") && e.contains("not part of the format"),
            "{e}"
        );
        let want: BTreeSet<String> = ["a", "q", "h", "u", "z"].map(String::from).into();
        assert!(
            f.expect_exactly(&want)
                .unwrap_err()
                .to_string()
                .contains("`z`")
        );
        assert!(TensorFile::parse("t.safetensors", b"\x05\0\0\0\0\0\0\0{}").is_err());
    }
}
