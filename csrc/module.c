/* The clfast._C extension module. Importing it loads the shared library, whose static
 * TORCH_LIBRARY blocks register the torch.ops.clfast.* ops. It also reports how the
 * library was built (clfast.info()). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

const char* clfast_build_info(void);

static PyObject* build_info(PyObject* self, PyObject* args) {
  (void)self;
  (void)args;
  return PyUnicode_FromString(clfast_build_info());
}

static PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "How this clfast library was built, as 'key=value' lines."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
