//! GPU support for Manta.
//!
//! Every use of CUDA in Manta goes through this crate, on cudarc with the driver library loaded
//! at run time (feature `cuda`; `nccl` adds NCCL): a build needs no CUDA toolkit, and a machine
//! without the driver or without a device gets an error saying so — never a panic (cudarc
//! panics on the first call when `libcuda` is absent, so every path here checks for the library
//! first, see [`driver`]).
//!
//! What is here today:
//! - [`driver`] and [`devices`]: whether CUDA can be used, and the devices this process sees
//!   (name, memory, compute capability, PCI bus id — the id the launcher's topology finds in
//!   sysfs, so the two can be matched);
//! - [`Gpu`]: a worker's context and stream on one device.
//!
//! Device binding per worker and per rank, and `manta::gpu_ids()` inside tasks and actors, are
//! in `manta-core` and `manta-launcher`; pinned store memory, GPU-resident objects and the NCCL
//! backend of the collectives are not built yet (see `ARCHITECTURE.md`).

#[cfg(feature = "cuda")]
use std::sync::Arc;

/// Why a GPU operation could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// This build has no CUDA support (the `cuda` feature is off).
    #[error("this build of Manta has no CUDA support (build with the `cuda` feature)")]
    NotBuilt,
    /// The CUDA driver library (`libcuda.so`) is not on this machine.
    #[error("no CUDA driver on this machine (libcuda.so was not found)")]
    NoDriver,
    /// The driver is there but has no device for this process (none installed, or
    /// `CUDA_VISIBLE_DEVICES` hides them all).
    #[error("the CUDA driver reports no device for this process")]
    NoDevice,
    /// A device ordinal beyond what this process sees.
    #[error("no CUDA device {ordinal}: this process sees {count}")]
    NoSuchDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// How many devices this process sees.
        count: usize,
    },
    /// A CUDA call failed.
    #[error("CUDA {what}: {message}")]
    Cuda {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        message: String,
    },
}

/// A device as this process sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// Its ordinal in this process (CUDA's numbering after `CUDA_VISIBLE_DEVICES`).
    pub ordinal: usize,
    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Device memory in bytes.
    pub total_memory: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// PCI bus id as sysfs spells it (`0000:00:06.0`), lower case.
    pub pci_bus_id: String,
}

/// Whether CUDA can be used here: `Ok` when the driver library loads and initialises.
pub fn driver() -> Result<(), GpuError> {
    imp::driver()
}

/// Whether the NCCL library is on this machine (the `nccl` feature; false without it).
pub fn nccl_present() -> bool {
    imp::nccl_present()
}

/// The devices this process sees, in CUDA's order. An empty list is never returned: no device
/// is [`GpuError::NoDevice`], no driver [`GpuError::NoDriver`].
pub fn devices() -> Result<Vec<DeviceInfo>, GpuError> {
    imp::devices()
}

/// The PCI bus id of a device as sysfs spells it, from the driver's domain, bus and device
/// numbers (function 0: CUDA devices are function 0).
pub fn pci_bus_id(domain: u32, bus: u32, device: u32) -> String {
    format!("{domain:04x}:{bus:02x}:{device:02x}.0")
}

/// A worker's handle on one device: its context (the device's primary context, shared by
/// every user of the device in the process) and a stream of its own.
#[derive(Clone)]
pub struct Gpu {
    #[cfg(feature = "cuda")]
    ctx: Arc<cudarc::driver::CudaContext>,
    #[cfg(feature = "cuda")]
    stream: Arc<cudarc::driver::CudaStream>,
    ordinal: usize,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens device `ordinal` (as this process numbers them) with a new stream.
    pub fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        imp::open(ordinal)
    }

    /// The device's ordinal in this process.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's context.
    #[cfg(feature = "cuda")]
    pub fn context(&self) -> &Arc<cudarc::driver::CudaContext> {
        &self.ctx
    }

    /// This handle's stream.
    #[cfg(feature = "cuda")]
    pub fn stream(&self) -> &Arc<cudarc::driver::CudaStream> {
        &self.stream
    }

    /// Copies `host` to the device and back on this handle's stream, returning what came back
    /// (a round trip that proves the device, the context and the stream work).
    pub fn round_trip(&self, host: &[u8]) -> Result<Vec<u8>, GpuError> {
        imp::round_trip(self, host)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use std::sync::OnceLock;

    use cudarc::driver::{CudaContext, result, sys};

    use super::{DeviceInfo, Gpu, GpuError};

    fn cuda(what: &'static str) -> impl Fn(result::DriverError) -> GpuError {
        move |e| GpuError::Cuda {
            what,
            message: e.to_string(),
        }
    }

    /// Loads and initialises the driver once per process.
    pub(super) fn driver() -> Result<(), GpuError> {
        static INIT: OnceLock<Result<(), String>> = OnceLock::new();
        // SAFETY: `is_culib_present` only tries to dlopen the driver library by name; it runs no
        // code of the library beyond its initialisers, which is what loading it means.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        INIT.get_or_init(|| result::init().map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| GpuError::Cuda {
                what: "initialising the driver",
                message,
            })
    }

    pub(super) fn nccl_present() -> bool {
        #[cfg(feature = "nccl")]
        {
            // SAFETY: as for the driver: only a dlopen of the library by name.
            unsafe { cudarc::nccl::sys::is_culib_present() }
        }
        #[cfg(not(feature = "nccl"))]
        false
    }

    fn count() -> Result<usize, GpuError> {
        driver()?;
        let n = result::device::get_count().map_err(cuda("counting devices"))?;
        match usize::try_from(n) {
            Ok(0) | Err(_) => Err(GpuError::NoDevice),
            Ok(n) => Ok(n),
        }
    }

    pub(super) fn devices() -> Result<Vec<DeviceInfo>, GpuError> {
        let n = count()?;
        (0..n).map(device).collect()
    }

    fn device(ordinal: usize) -> Result<DeviceInfo, GpuError> {
        use sys::CUdevice_attribute as A;
        let dev = result::device::get(ordinal as i32).map_err(cuda("opening a device"))?;
        // SAFETY: `dev` is a device handle the driver just returned for a valid ordinal, and
        // the attribute is one of the driver's enumerated attributes.
        let attr = |a: A| unsafe { result::device::get_attribute(dev, a) };
        let attr = |a: A| attr(a).map_err(cuda("reading a device attribute"));
        // SAFETY: as above, a valid device handle.
        let total = unsafe { result::device::total_mem(dev) }.map_err(cuda("reading memory"))?;
        Ok(DeviceInfo {
            ordinal,
            name: result::device::get_name(dev).map_err(cuda("reading the name"))?,
            total_memory: total as u64,
            compute_capability: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            pci_bus_id: super::pci_bus_id(
                attr(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID)? as u32,
                attr(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID)? as u32,
                attr(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)? as u32,
            ),
        })
    }

    pub(super) fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        let count = count()?;
        if ordinal >= count {
            return Err(GpuError::NoSuchDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda("creating a context"))?;
        let stream = ctx.new_stream().map_err(cuda("creating a stream"))?;
        Ok(Gpu {
            ctx,
            stream,
            ordinal,
        })
    }

    pub(super) fn round_trip(gpu: &Gpu, host: &[u8]) -> Result<Vec<u8>, GpuError> {
        if host.is_empty() {
            return Ok(Vec::new());
        }
        let device = gpu
            .stream
            .clone_htod(host)
            .map_err(cuda("copying to the device"))?;
        gpu.stream
            .clone_dtoh(&device)
            .map_err(cuda("copying from the device"))
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::{DeviceInfo, Gpu, GpuError};

    pub(super) fn driver() -> Result<(), GpuError> {
        Err(GpuError::NotBuilt)
    }

    pub(super) fn nccl_present() -> bool {
        false
    }

    pub(super) fn devices() -> Result<Vec<DeviceInfo>, GpuError> {
        Err(GpuError::NotBuilt)
    }

    pub(super) fn open(_ordinal: usize) -> Result<Gpu, GpuError> {
        Err(GpuError::NotBuilt)
    }

    pub(super) fn round_trip(_gpu: &Gpu, _host: &[u8]) -> Result<Vec<u8>, GpuError> {
        Err(GpuError::NotBuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_bus_ids_are_spelled_as_sysfs_does() {
        assert_eq!(pci_bus_id(0, 6, 0), "0000:06:00.0");
        assert_eq!(pci_bus_id(1, 0xaf, 0x1f), "0001:af:1f.0");
    }

    /// With no driver (CPU machines, and builds without `cuda`) every entry point is an error
    /// naming why, never a panic; with one, the devices are listed and a round trip through
    /// each is byte-exact.
    #[test]
    fn devices_are_listed_or_their_absence_is_an_error() {
        match devices() {
            Ok(list) => {
                assert!(!list.is_empty());
                for d in &list {
                    assert!(d.total_memory > 0, "{d:?}");
                    let gpu = Gpu::open(d.ordinal).expect("a listed device opens");
                    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
                    assert_eq!(gpu.round_trip(&data).unwrap(), data);
                }
                let past = list.len();
                assert!(matches!(
                    Gpu::open(past),
                    Err(GpuError::NoSuchDevice { ordinal, count }) if ordinal == past && count == past
                ));
            }
            Err(e) => {
                assert!(
                    std::env::var_os("MANTA_TESTING_REQUIRE_GPU").is_none(),
                    "MANTA_TESTING_REQUIRE_GPU is set but {e}"
                );
                eprintln!("skipped: {e}");
                assert!(matches!(
                    e,
                    GpuError::NotBuilt | GpuError::NoDriver | GpuError::NoDevice
                ));
                assert!(Gpu::open(0).is_err());
                assert!(driver().is_err() || matches!(e, GpuError::NoDevice));
            }
        }
    }
}
