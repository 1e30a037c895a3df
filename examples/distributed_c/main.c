/* Data-parallel training from C: the step exported by model.py (libdp.so, dp.h) on every
 * rank of an MPI job. libdp.so needs only libc; this program gives it MPI.
 *
 *     mpiexec -n N ./train DIR     (N <= 4) reads DIR/data.bin; rank 0 writes every
 *                                  variable to DIR/weights_c.bin (dp.h's order)
 *
 * Build (build.sh): mpicc -O2 -I DIR -o DIR/train main.c -L DIR -ldp -Wl,-rpath,DIR
 * (mpicc is in the mpich wheel; with a system MPI use its mpicc).
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dp.h"

enum { STEPS = 20, MAX_RANKS = 4, PER_RANK = 8, FEATURES = 6 };

/* ---- The MPI binding of the step's communicator (dp.h: dp_comm) ------------------- */
static MPI_Datatype mpi_type(int32_t dtype) { return dtype == 2 ? MPI_DOUBLE : MPI_FLOAT; }

static int32_t comm_allreduce(void *ctx, const void *send, void *recv, int64_t count,
                              int32_t dtype, int32_t op) {
    (void)op; /* 0: sum, the only one the step uses */
    return MPI_Allreduce(send, recv, (int)count, mpi_type(dtype), MPI_SUM, *(MPI_Comm *)ctx);
}

static int32_t comm_iallreduce(void *ctx, const void *send, void *recv, int64_t count,
                               int32_t dtype, int32_t op, void *request) {
    (void)op;
    return MPI_Iallreduce(send, recv, (int)count, mpi_type(dtype), MPI_SUM,
                          *(MPI_Comm *)ctx, (MPI_Request *)request);
}

static int32_t comm_wait(void *ctx, void *request) {
    (void)ctx;
    return MPI_Wait((MPI_Request *)request, MPI_STATUS_IGNORE);
}

static int32_t comm_test(void *ctx, void *request) { /* lets MPI progress between kernels */
    int done;
    (void)ctx;
    return MPI_Test((MPI_Request *)request, &done, MPI_STATUS_IGNORE);
}
/* ------------------------------------------------------------------------------------ */

static void fail(const char *what, int rc) {
    fprintf(stderr, "%s failed: %d\n", what, rc);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 2 || size > MAX_RANKS) fail("usage: mpiexec -n N<=4 train DIR", 2);
    _Static_assert(sizeof(MPI_Request) <= 8, "dp_comm gives a request 8 bytes");
    MPI_Comm world = MPI_COMM_WORLD;
    dp_comm comm = {comm_allreduce, &world, size, comm_iallreduce, comm_wait, comm_test};
    dp_set_communicator(&comm);

    /* data.bin: x (STEPS, MAX_RANKS * PER_RANK, FEATURES) float32, then y int32 */
    static float x[STEPS][MAX_RANKS * PER_RANK][FEATURES];
    static int32_t y[STEPS][MAX_RANKS * PER_RANK];
    char path[4096];
    snprintf(path, sizeof path, "%s/data.bin", argv[1]);
    FILE *f = fopen(path, "rb");
    if (!f || fread(x, sizeof x, 1, f) != 1 || fread(y, sizeof y, 1, f) != 1)
        fail("reading data.bin", 3);
    fclose(f);

    dp_context *ctx;
    int rc = dp_create(&ctx);
    if (rc != DP_OK) fail(dp_error_string(rc), rc);
    float loss;
    for (int s = 0; s < STEPS; s++) {
        const void *inputs[] = {x[s][rank * PER_RANK], &y[s][rank * PER_RANK]};
        void *outputs[] = {&loss};
        rc = dp_run_arrays(ctx, inputs, outputs);
        if (rc != DP_OK) fail(dp_failure(ctx) ? dp_failure(ctx) : dp_error_string(rc), rc);
    }
    if (rank == 0) {
        snprintf(path, sizeof path, "%s/weights_c.bin", argv[1]);
        f = fopen(path, "wb");
        for (int i = 0; f && i < dp_num_variables(); i++) {
            size_t bytes = dp_variable_bytes(i);
            void *buf = malloc(bytes);
            if (!buf || dp_get_variable(ctx, i, buf, bytes) != DP_OK) fail("get_variable", 4);
            fwrite(buf, bytes, 1, f);
            free(buf);
        }
        if (!f || fclose(f) != 0) fail("writing weights_c.bin", 5);
        printf("%d rank(s): loss after %d steps %.6f\n", size, STEPS, loss);
    }
    dp_destroy(ctx);
    MPI_Finalize();
    return 0;
}
