/* rnnkit's fused engine: the whole time loop of one layer and direction, forward and backward
 * (backpropagation through time derived by hand), for the RNN (tanh, relu), LSTM and GRU cells.
 *
 * Built at first use by rnnkit/engines/_compiled.py with the system C compiler and loaded with
 * ctypes; no PyTorch headers. The per-step recurrent product calls the BLAS ?gemm_ whose address
 * Python passes in (torch's own), or a plain loop for tiny sizes and when none is given.
 * The gate math is written as elementwise loops that the compiler turns into SIMD code, with
 * exp and tanh from glibc's vector math library (libmvec) where the platform has it.
 *
 * rnn_kernels_impl.h holds the kernels, written once and included here for float and double.
 * The readable twin of every kernel is the cell's step function in rnnkit/cells (the reference
 * engine), which the tests compare these kernels against.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
/* Declare the SIMD variants glibc's libmvec provides, without -ffast-math (IEEE semantics kept). */
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float tanhf(float);
__attribute__((simd("notinbranch"))) double exp(double);
__attribute__((simd("notinbranch"))) double tanh(double);
#endif

enum { CELL_RNN_TANH = 0, CELL_RNN_RELU = 1, CELL_LSTM = 2, CELL_GRU = 3 };

/* Below this many multiply-adds a plain loop beats a call into the BLAS. */
#define BLAS_MIN_WORK 4096L

static int gates_of(int cell) { return cell == CELL_LSTM ? 4 : cell == CELL_GRU ? 3 : 1; }
/* Saved activations per unit: LSTM i, f, g, o; GRU r, z, n and W_hn h + b_hn; RNN h~. */
static int saved_of(int cell) { return cell == CELL_LSTM || cell == CELL_GRU ? 4 : 1; }

int rnnkit_kernels_version(void) { return 1; }

#define REAL float
#define SFX(name) name##_f32
#define EXP expf
#define TANH tanhf
#include "rnn_kernels_impl.h"
#undef REAL
#undef SFX
#undef EXP
#undef TANH

#define REAL double
#define SFX(name) name##_f64
#define EXP exp
#define TANH tanh
#include "rnn_kernels_impl.h"
#undef REAL
#undef SFX
#undef EXP
#undef TANH
