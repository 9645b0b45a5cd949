"""threadpoolctl support: fusedrnn's thread count as one of threadpoolctl's thread pools.

threadpoolctl finds thread pools by scanning the shared libraries loaded in the process and
matching each against its registered controllers. fusedrnn's controller matches the native
extension (``_C.*``, and only a library exporting ``fusedrnn_get_num_threads``, so torch's own
``_C`` never matches) and reads and sets fusedrnn's count through the extension's C functions
(``fusedrnn_get_num_threads``, ``fusedrnn_set_num_threads``, ``fusedrnn_version``;
csrc/bindings/c_api.cpp). Its ``user_api`` is ``"openmp"``: fusedrnn's threads are OpenMP
threads, so ``threadpool_limits(1, user_api="openmp")`` (the usual way to keep OpenMP code from
oversubscribing the cores) covers them too. Its ``internal_api`` is ``"fusedrnn"``, to single it
out (``ThreadpoolController().select(internal_api="fusedrnn")``). GNU OpenMP's own entry
(``libgomp``) stays listed apart: fusedrnn names its count on every region and does not follow
``omp_set_num_threads``.

When it registers. threadpoolctl has no plugin discovery: a controller must be passed to
``threadpoolctl.register`` once threadpoolctl is imported. ``import fusedrnn`` does not import
threadpoolctl, which costs ~15 ms and sets ``KMP_DUPLICATE_LIB_OK`` in ``os.environ`` at import,
a process-wide change fusedrnn should not make behind its user's back. Instead:

* threadpoolctl already imported: fusedrnn registers at import;
* otherwise fusedrnn puts a finder on ``sys.meta_path`` that, when ``threadpoolctl`` itself is
  imported (by the user or by any library), lets the regular finders and loader import it and
  registers right after its module ran. It acts once (later it only compares one module name
  per import), changes nothing else, and a failure to register only warns;
* :func:`register_threadpoolctl` registers explicitly (for an import the hook did not see, such
  as ``importlib.reload(threadpoolctl)``); calling it again does nothing.
"""

import ctypes
import importlib.abc
import sys
import warnings

_NAME = "threadpoolctl"
_SYMBOLS = ("fusedrnn_get_num_threads", "fusedrnn_set_num_threads", "fusedrnn_version")


def _controller_class(tpc):
    """fusedrnn's ``LibController`` for the threadpoolctl module ``tpc``."""

    class FusedRNNController(tpc.LibController):
        """fusedrnn's thread count (``fusedrnn.get_num_threads``/``set_num_threads``)."""

        user_api = "openmp"
        internal_api = "fusedrnn"
        # threadpoolctl matches lower-cased file names: _C.cpython-311-x86_64-linux-gnu.so.
        filename_prefixes = ("_c.",)
        # Any other "_C" library (torch's, torchvision's) lacks these: it is never matched.
        check_symbols = _SYMBOLS

        # threadpoolctl builds a controller (and asks its version) for every library whose
        # name matches, before it checks check_symbols: each method tolerates a library
        # without fusedrnn's symbols.
        def get_num_threads(self):
            get = getattr(self.dynlib, "fusedrnn_get_num_threads", None)
            return None if get is None else get()

        def set_num_threads(self, num_threads):
            set_ = getattr(self.dynlib, "fusedrnn_set_num_threads", None)
            if set_ is None:
                return None
            # an explicit count, as fusedrnn.set_num_threads: fusedrnn.torch stops following
            # torch's count from here on
            import fusedrnn
            fusedrnn._threads_set_explicitly = True
            return set_(int(num_threads))

        def get_version(self):
            version = getattr(self.dynlib, "fusedrnn_version", None)
            if version is None:
                return None
            version.restype = ctypes.c_char_p
            return version().decode()

    return FusedRNNController


def _is_registered(tpc):
    return any(getattr(c, "internal_api", None) == "fusedrnn"
               for c in getattr(tpc, "_ALL_CONTROLLERS", ()))


def _register(tpc):
    if not hasattr(tpc, "register") or not hasattr(tpc, "LibController"):
        raise ImportError(f"threadpoolctl {getattr(tpc, '__version__', '?')} has no "
                          "threadpoolctl.register (threadpoolctl >= 3.0 needed)")
    if not _is_registered(tpc):
        tpc.register(_controller_class(tpc))


def register_threadpoolctl() -> None:
    """Registers fusedrnn's thread count with threadpoolctl (imports it; ``ImportError`` if it
    is missing or older than 3.0). Then ``threadpoolctl.threadpool_info()`` lists fusedrnn
    (``internal_api`` ``"fusedrnn"``, ``user_api`` ``"openmp"``) and
    ``threadpoolctl.threadpool_limits(n)`` sets ``fusedrnn.set_num_threads(n)`` for its block.

    Rarely needed: fusedrnn registers by itself when threadpoolctl is imported, before or after
    fusedrnn (fusedrnn/_threadpoolctl.py says how, and why ``import fusedrnn`` does not import
    threadpoolctl). Calling it again does nothing."""
    import threadpoolctl

    _register(threadpoolctl)


class _RegisteringLoader(importlib.abc.Loader):
    """threadpoolctl's own loader, registering fusedrnn once the module has run."""

    def __init__(self, loader, finder):
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name):  # get_source, get_resource_reader...: threadpoolctl's loader
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # The module runs exactly as without the hook, with its own loader in place.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._finder.done = True
        try:
            _register(module)
        except Exception as e:  # never fail the import of threadpoolctl
            warnings.warn(f"fusedrnn could not register with threadpoolctl: {e}",
                          RuntimeWarning, stacklevel=2)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """On ``sys.meta_path``: finds ``threadpoolctl`` with the other finders and wraps its
    loader to register fusedrnn after the module ran; every other name is left to them."""

    def __init__(self):
        self.done = False

    def find_spec(self, name, path=None, target=None):
        if name != _NAME or self.done:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None  # an unusual loader: imported without the hook
        spec.loader = _RegisteringLoader(spec.loader, self)
        return spec


def install() -> None:
    """Registers now if threadpoolctl is imported, else when it is (called by ``import
    fusedrnn``). Never raises: threadpoolctl support must not break ``import fusedrnn``."""
    tpc = sys.modules.get(_NAME)
    if tpc is not None:
        try:
            _register(tpc)
        except Exception as e:
            warnings.warn(f"fusedrnn could not register with threadpoolctl: {e}",
                          RuntimeWarning, stacklevel=3)
        return
    if not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
