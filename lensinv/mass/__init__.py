"""Mass models: one profile per file under :class:`MassProfile`, a registry, and :class:`Lens`.

Conventions are lenstronomy's (DESIGN.md), so results can be checked against
it and models moved between the two codes. To add a profile, see
``docs/extending.md``: one file here (the class, decorated with ``@register``,
and its Numba deflection kernel) and its import below.
"""

from .base import (DEFLECTION_SIGNATURE, MassProfile, deflection_kernel, lenstronomy_class, profile_class, profiles,
                   register)
from .sie import SIE
from .shear import ExternalShear
from .epl import EPL
from .shift import Shift
from .lens import Lens

__all__ = ["DEFLECTION_SIGNATURE", "EPL", "ExternalShear", "Lens", "MassProfile", "SIE", "Shift", "deflection_kernel",
           "lenstronomy_class", "profile_class", "profiles", "register"]
