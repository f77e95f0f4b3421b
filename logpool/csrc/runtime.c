/*
 * Starting the embedded Python runtime from a host that is not Python (luajit, nginx).
 * Runs once per process, before the first call into cffi's embedding API, which would
 * otherwise call Py_InitializeEx() itself — with signal handlers, with the host's (empty)
 * environment, and with Py_FatalError (abort) when the stdlib cannot be found.
 *
 * The build bakes in (build_ffi.py):
 *   LOGPOOL_BUILD_EXECUTABLE  the venv's python: PyConfig.executable, so that getpath finds
 *                             pyvenv.cfg, the stdlib and the venv's site-packages (an
 *                             installed library uses the python of its own site-packages)
 *   LOGPOOL_BUILD_LIBPYTHON   the libpython the library was linked against (also the rpath)
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "embedding.h"
#include "logpool_internal.h"

#ifndef LOGPOOL_BUILD_EXECUTABLE
#error "build_ffi.py defines LOGPOOL_BUILD_EXECUTABLE"
#endif
#ifndef LOGPOOL_BUILD_LIBPYTHON
#error "build_ffi.py defines LOGPOOL_BUILD_LIBPYTHON"
#endif

static pthread_mutex_t runtime_lock = PTHREAD_MUTEX_INITIALIZER;
static int runtime_state; /* 0: not started, 1: running, -1: failed for good */
static int runtime_failure_final; /* set by a step whose failure cannot be retried */
static unsigned runtime_generation;
static char runtime_error[400];

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A thread of the parent may have held runtime_lock at fork(): the child gets a fresh one. */
static void runtime_after_fork_child(void)
{
    pthread_mutex_init(&runtime_lock, NULL);
}

__attribute__((constructor)) static void runtime_load(void)
{
    pthread_atfork(NULL, NULL, runtime_after_fork_child);
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

static int same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (realpath(a, ra) == NULL || realpath(b, rb) == NULL)
        return strcmp(a, b) == 0;
    return strcmp(ra, rb) == 0;
}

/* Trap 6: LuaJIT unloads a library whose ffi.load handle is collected; our threads would
 * then run unmapped code. Pin this object for the life of the process. */
static int pin_self(char *err, size_t errlen)
{
    Dl_info self;
    if (dladdr((void *)&logpool__runtime_start, &self) == 0 || self.dli_fname == NULL)
        return fail(err, errlen, "embedded Python runtime unavailable: dladdr() cannot find "
                                 "liblogpool itself");
    if (dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) == NULL)
        return fail(err, errlen, "embedded Python runtime unavailable: cannot pin %s: %s",
                    self.dli_fname, dlerror());
    return 0;
}

/* Trap 1: ffi.load() opened us with RTLD_LOCAL, so libpython's symbols are invisible to the
 * extension modules Python will dlopen (_cffi_backend, _socket, select): promote them.
 * Trap 2: the libpython that got loaded must be the one we were built for. */
static int promote_libpython(char *err, size_t errlen)
{
    Dl_info py;
    if (dladdr((void *)&Py_IsInitialized, &py) == 0 || py.dli_fname == NULL)
        return fail(err, errlen, "embedded Python runtime unavailable: dladdr() cannot find "
                                 "libpython");
    if (!Py_IsInitialized() && !same_file(py.dli_fname, LOGPOOL_BUILD_LIBPYTHON) &&
        access(LOGPOOL_BUILD_LIBPYTHON, R_OK) != 0) {
        /* The real cause: this user cannot read the build's libpython, so the loader went
         * on to another one. Rebuilding would not help; an installation it can read does. */
        int e = errno;
        return fail(err, errlen,
                    "embedded Python runtime unavailable: cannot read %s, the libpython "
                    "liblogpool was built against: %s (running as uid %d), so the loader took "
                    "%s instead; install logpool where this user can read it and its Python "
                    "(make install PREFIX=/opt/logpool)",
                    LOGPOOL_BUILD_LIBPYTHON, strerror(e), (int)geteuid(), py.dli_fname);
    }
    if (!Py_IsInitialized() && !same_file(py.dli_fname, LOGPOOL_BUILD_LIBPYTHON))
        return fail(err, errlen,
                    "embedded Python runtime unavailable: loaded %s but liblogpool was built "
                    "against %s; rebuild logpool for this Python (make build)",
                    py.dli_fname, LOGPOOL_BUILD_LIBPYTHON);
    if (dlopen(py.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL) == NULL)
        return fail(err, errlen, "embedded Python runtime unavailable: cannot promote %s to "
                                 "RTLD_GLOBAL: %s", py.dli_fname, dlerror());
    return 0;
}

/* Trap 7: the nginx worker user must be able to read the venv and Python's prefix. Say so
 * in words rather than letting Python fail on a missing 'encodings' module. */
static char python_executable[PATH_MAX];

/* The interpreter whose site-packages hold this library. Installed (pip install ., a wheel),
 * the library sits at <prefix>/lib/pythonX.Y/site-packages/logpool/liblogpool.so and the
 * interpreter is <prefix>/bin/pythonX.Y: its getpath finds that venv and its packages. Built
 * in a source tree, it is the interpreter that built it. */
static const char *find_executable(void)
{
    Dl_info self;
    char path[PATH_MAX];
    if (dladdr((void *)&logpool__runtime_start, &self) != 0 && self.dli_fname != NULL &&
        realpath(self.dli_fname, path) != NULL) {
        char *parts[5];
        int n = 0;
        for (char *p = path + strlen(path); p > path && n < 5; p--)
            if (*p == '/') {
                *p = '\0';
                parts[n++] = p + 1; /* liblogpool.so, logpool, site-packages, pythonX.Y, lib */
            }
        if (n == 5 && strcmp(parts[2], "site-packages") == 0 &&
            strncmp(parts[3], "python", 6) == 0 && strcmp(parts[4], "lib") == 0) {
            snprintf(python_executable, sizeof python_executable, "%s/bin/%s", path, parts[3]);
            if (access(python_executable, X_OK) == 0)
                return python_executable;
        }
    }
    snprintf(python_executable, sizeof python_executable, "%s", LOGPOOL_BUILD_EXECUTABLE);
    return python_executable;
}

static int check_readable(const char *executable, char *err, size_t errlen)
{
    if (access(executable, X_OK) == 0)
        return 0;
    int e = errno;
    return fail(err, errlen,
                "embedded Python runtime unavailable: %s: %s (running as uid %d); the library, "
                "the venv and Python's installation must be readable by this user (nginx: "
                "the 'user' directive)", executable, strerror(e), (int)geteuid());
}

static int initialize_python(const char *executable, char *err, size_t errlen)
{
    /* nginx clears the environment: the C locale would make every open() ASCII. */
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1;
    runtime_failure_final = 1; /* from here on a failure leaves Python unusable */
    PyStatus status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        return fail(err, errlen, "embedded Python runtime unavailable: cannot start Python "
                    "(pre-initialization): %s", status.err_msg ? status.err_msg : "unknown");

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.install_signal_handlers = 0; /* trap 3: the host owns signals */
    config.site_import = 1;             /* the venv's site-packages */
    config.user_site_directory = 0;
    config.parse_argv = 0;
    status = PyConfig_SetBytesString(&config, &config.executable, executable);
    if (!PyStatus_Exception(status))
        status = PyConfig_SetBytesString(&config, &config.program_name, executable);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return fail(err, errlen,
                    "embedded Python runtime unavailable: cannot start Python for %s (uid %d): "
                    "%s%s%s", LOGPOOL_BUILD_EXECUTABLE, (int)geteuid(),
                    status.func ? status.func : "", status.func ? ": " : "",
                    status.err_msg ? status.err_msg : "unknown error");
    /* cffi's embedding entry points take the GIL with PyGILState_Ensure: release it. */
    PyEval_SaveThread();
    runtime_failure_final = 0;
    return 0;
}

int logpool__runtime_start(char *err, size_t errlen)
{
    int rc = 0;
    pthread_mutex_lock(&runtime_lock);
    if (runtime_state == 1 && runtime_generation != logpool__fork_generation()) {
        /* Trap 4: Python started in a parent before fork (nginx: init_by_lua runs in the
         * master). Its threads and GIL state did not survive the fork. */
        rc = fail(err, errlen,
                  "embedded Python runtime unavailable: Python was started in a parent process "
                  "before fork(); start pools after fork (nginx: init_worker_by_lua, not "
                  "init_by_lua)");
    } else if (runtime_state == -1) {
        rc = fail(err, errlen, "%s", runtime_error);
    } else if (runtime_state == 0) {
        int host_python = Py_IsInitialized();
        const char *executable = host_python ? NULL : find_executable();
        if (pin_self(err, errlen) != 0 || promote_libpython(err, errlen) != 0 ||
            (!host_python && (check_readable(executable, err, errlen) != 0 ||
                              initialize_python(executable, err, errlen) != 0))) {
            /* Only a failed Py_Initialize is final; the rest may be fixed and retried. */
            if (runtime_failure_final) {
                runtime_state = -1;
                snprintf(runtime_error, sizeof runtime_error, "%s", err);
            }
            rc = -1;
        } else {
            runtime_state = 1;
            runtime_generation = logpool__fork_generation();
        }
    }
    pthread_mutex_unlock(&runtime_lock);
    return rc;
}

/* logpool_flush and logpool_close wait for writer threads, which need the GIL. A host that
 * calls them while holding it (lupa's __gc, ctypes.PyDLL) would wait for nothing: release
 * it for the wait. Returns the thread state to restore, or NULL. */
void *logpool__gil_release(void)
{
    if (runtime_state == 1 && Py_IsInitialized() && PyGILState_Check())
        return PyEval_SaveThread();
    return NULL;
}

void logpool__gil_restore(void *tstate)
{
    if (tstate != NULL)
        PyEval_RestoreThread((PyThreadState *)tstate);
}

/* While Python finalizes, daemon threads that try to take the GIL are ended: writers will
 * not answer a stop, so close must not wait for them. */
int logpool__python_finalizing(void)
{
    return runtime_state == 1 && _Py_IsFinalizing();
}

/* logpool_free: drop what the Python side keeps for a pool (writers, histograms, TLS
 * contexts). Skipped where Python cannot run: never started, another process's runtime
 * (fork), or finalizing. */
void logpool__runtime_forget_pool(logpool_t *pool)
{
    if (runtime_state != 1 || runtime_generation != logpool__fork_generation() ||
        !Py_IsInitialized() || _Py_IsFinalizing())
        return;
    logpool__py_forget(pool);
}
