"""S4-style linear time-invariant SSMs (Gu et al. 2022): HiPPO init, discretization, convolution kernel, FFT
convolution, and the recurrence (the spec) with its decode step. Inputs are (batch, seqlen, H).
"""

from .discretize import discretize
from .hippo import hippo_legs
from .kernel import fft_conv, ssm_kernel
from .reference import s4_recurrent
from .step import s4_step

__all__ = ["discretize", "hippo_legs", "ssm_kernel", "fft_conv", "s4_recurrent", "s4_step"]
