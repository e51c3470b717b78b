/* kvtc bench: put/get throughput and latency against a running kvtcd.
 * Each client is a thread with its own connection (connections are
 * independent, see kvtc.h) keeping --depth asynchronous operations in
 * flight, so one process can load the daemon like many engines would. */
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

#define MAX_CLIENTS 1024
#define MAX_DEPTH 256
#define DELETE_BATCH 512
#define SPIN_S 200e-6

struct bench_opts {
    uint64_t size;
    uint64_t count;   /* operations per phase, over all clients */
    uint32_t clients;
    uint32_t depth;
    uint32_t batch;   /* chunks per operation */
    uint64_t id;      /* key space; 0: random (a later --op get run reuses an
                         earlier --op put --keep run's chunks with --id) */
    int do_put, do_get, keep, verify;
    int shared;       /* buffers from kvtc_mem_alloc (shared with kvtcd) */
};

struct slot;

struct client {
    int idx;
    const struct kvtc_cli_global *g;
    const struct bench_opts *o;
    kvtc_conn *conn;
    uint64_t first_op, n_ops;  /* this client's share of the operations */
    double *lat;               /* seconds per op */
    size_t n_lat;
    int phase_put;
    int err;
    char errmsg[256];
    struct slot *slots;
    uint8_t *src;              /* --shared: this connection's copy of the
                                  payload; NULL: src_buf */
};

struct slot {
    struct client *cl;
    int busy;
    double t0;
    kvtc_put_item *put;
    kvtc_get_item *get;
    uint64_t op;
};

static uint8_t run_id[8];
static const uint8_t *src_buf; /* shared, read-only payload */
static pthread_barrier_t barrier;
static atomic_ullong done_ops;
static atomic_int any_error;

static kvtc_key bench_key(uint64_t chunk)
{
    kvtc_key k = {{0}};
    memcpy(k.bytes, "kvtcbnch", 8);
    memcpy(k.bytes + 8, run_id, 8);
    memcpy(k.bytes + 16, &chunk, sizeof chunk);
    return k;
}

static int parse_u64(const char *s, uint64_t *v)
{
    return kvtc_cli_size(s, v);
}

static int bench_opt(void *ctx, int argc, char **argv, int *i)
{
    struct bench_opts *o = ctx;
    const char *n = argv[*i];
    if (!strcmp(n, "--keep")) {
        o->keep = 1;
        return 1;
    }
    if (!strcmp(n, "--verify")) {
        o->verify = 1;
        return 1;
    }
    if (!strcmp(n, "--shared")) {
        o->shared = 1;
        return 1;
    }
    const char *names[] = {"--size", "--count", "--clients", "--depth", "--batch", "--op", "--id"};
    size_t which = sizeof names / sizeof names[0];
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        if (!strcmp(n, names[k]))
            which = k;
    if (which == sizeof names / sizeof names[0])
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "kvtc bench: %s needs a value\n", n);
        return -1;
    }
    const char *v = argv[++*i];
    uint64_t x = 0;
    if (which == 5) {
        o->do_put = !strcmp(v, "put") || !strcmp(v, "both");
        o->do_get = !strcmp(v, "get") || !strcmp(v, "both");
        if (!o->do_put && !o->do_get) {
            fprintf(stderr, "kvtc bench: --op is put, get or both\n");
            return -1;
        }
        return 1;
    }
    if (parse_u64(v, &x) || x == 0) {
        fprintf(stderr, "kvtc bench: bad value '%s' for %s\n", v, n);
        return -1;
    }
    switch (which) {
    case 0: o->size = x; break;
    case 1: o->count = x; break;
    case 2: o->clients = x > MAX_CLIENTS ? MAX_CLIENTS + 1 : (uint32_t)x; break;
    case 3: o->depth = x > MAX_DEPTH ? MAX_DEPTH + 1 : (uint32_t)x; break;
    case 4: o->batch = x > 4096 ? 4097 : (uint32_t)x; break;
    case 6: o->id = x; break;
    }
    return 1;
}

static void fill_pattern(uint8_t *b, size_t n, uint64_t seed)
{
    uint64_t x = 0x9E3779B97F4A7C15ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b[i] = (uint8_t)x;
    }
}

static void op_done(int status, void *arg)
{
    struct slot *s = arg;
    struct client *cl = s->cl;
    double dt = kvtc_cli_now() - s->t0;
    s->busy = 0;
    if (status && !cl->err) {
        cl->err = status;
        snprintf(cl->errmsg, sizeof cl->errmsg, "%s chunk %llu: %s",
                 cl->phase_put ? "put" : "get", (unsigned long long)s->op,
                 kvtc_last_error(cl->conn)[0] ? kvtc_last_error(cl->conn) : kvtc_strerror(status));
        atomic_store(&any_error, 1);
    }
    if (!status && !cl->phase_put && cl->o->verify) {
        for (uint32_t b = 0; b < cl->o->batch; b++)
            if (s->get[b].size != cl->o->size ||
                memcmp(s->get[b].buf, src_buf, cl->o->size) != 0) {
                cl->err = KVTC_ECORRUPT;
                snprintf(cl->errmsg, sizeof cl->errmsg, "get returned different bytes");
                atomic_store(&any_error, 1);
            }
    }
    cl->lat[cl->n_lat++] = dt;
    atomic_fetch_add(&done_ops, 1);
}

static int submit(struct client *cl, struct slot *s, uint64_t op)
{
    const struct bench_opts *o = cl->o;
    kvtc_op_params p = {.field_mask = KVTC_OP_PARAM_FIELD_CALLBACK, .cb = op_done, .arg = s};
    s->busy = 1;
    s->op = op;
    s->t0 = kvtc_cli_now();
    for (uint32_t b = 0; b < o->batch; b++) {
        kvtc_key k = bench_key(op * o->batch + b);
        if (cl->phase_put) {
            s->put[b] = (kvtc_put_item){.field_mask = KVTC_PUT_FIELD_MEM, .key = k,
                                        .data = cl->src ? cl->src : src_buf, .size = o->size,
                                        .mem = KVTC_MEM_HOST};
        } else {
            void *buf = s->get[b].buf;
            s->get[b] = (kvtc_get_item){.field_mask = KVTC_GET_FIELD_MEM, .key = k, .buf = buf,
                                        .capacity = o->size, .mem = KVTC_MEM_HOST};
        }
    }
    int rc = cl->phase_put ? kvtc_put_batch_async(cl->conn, s->put, o->batch, &p)
                           : kvtc_get_batch_async(cl->conn, s->get, o->batch, &p);
    if (rc) {
        s->busy = 0;
        cl->err = rc;
        snprintf(cl->errmsg, sizeof cl->errmsg, "submit: %s", kvtc_last_error(cl->conn));
        atomic_store(&any_error, 1);
    }
    return rc;
}

/* One phase on one client: keep depth operations in flight until its share
 * is done, sleeping on the connection's fd in between. */
static void run_phase(struct client *cl)
{
    uint64_t next = 0;
    int fd = -1;
    double spin_until = kvtc_cli_now() + SPIN_S;
    kvtc_get_fd(cl->conn, &fd);
    for (;;) {
        for (uint32_t d = 0; d < cl->o->depth && next < cl->n_ops && !atomic_load(&any_error); d++)
            if (!cl->slots[d].busy && submit(cl, &cl->slots[d], cl->first_op + next++) == 0)
                continue;
        if (kvtc_progress(cl->conn) < 0 && !cl->err) {
            cl->err = KVTC_ECONN;
            snprintf(cl->errmsg, sizeof cl->errmsg, "%s", kvtc_last_error(cl->conn));
            atomic_store(&any_error, 1);
        }
        if (!kvtc_inflight(cl->conn) && (next >= cl->n_ops || atomic_load(&any_error)))
            return;
        int free_slot = 0;
        for (uint32_t d = 0; d < cl->o->depth; d++)
            free_slot |= !cl->slots[d].busy;
        if (free_slot && next < cl->n_ops && !atomic_load(&any_error))
            continue;
        /* Like the library's blocking calls: poll a little before sleeping. */
        if (kvtc_cli_now() < spin_until)
            continue;
        spin_until = kvtc_cli_now() + SPIN_S;
        if (kvtc_arm(cl->conn) == 0) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, 100);
        }
    }
}

/* --shared: the payload and the get buffers in memory kvtcd shares (freed
 * by kvtc_disconnect); refuses to measure anything else under that name. */
static int shared_buffers(struct client *cl)
{
    const struct bench_opts *o = cl->o;
    void *p = NULL;
    int rc = 0;
    if (o->do_put && !(rc = kvtc_mem_alloc(cl->conn, o->size, &p))) {
        cl->src = p;
        memcpy(cl->src, src_buf, o->size);
    }
    for (uint32_t d = 0; !rc && o->do_get && d < o->depth; d++)
        for (uint32_t b = 0; !rc && b < o->batch; b++)
            if (!(rc = kvtc_mem_alloc(cl->conn, o->size, &p)))
                cl->slots[d].get[b].buf = p;
    if (rc)
        snprintf(cl->errmsg, sizeof cl->errmsg, "kvtc_mem_alloc: %s", kvtc_strerror(rc));
    else if (!kvtc_mem_shared(cl->conn, o->do_put ? (void *)cl->src : cl->slots[0].get[0].buf)) {
        rc = KVTC_ENOTSUP;
        snprintf(cl->errmsg, sizeof cl->errmsg, "--shared: kvtcd does not share buffers with this "
                                                "process (another host, or no local path; "
                                                "KVTC_LOCAL_DEBUG=1 says why)");
    }
    return rc;
}

static void *client_main(void *arg)
{
    struct client *cl = arg;
    const struct bench_opts *o = cl->o;
    cl->slots = calloc(o->depth, sizeof *cl->slots);
    int ok = cl->slots != NULL;
    for (uint32_t d = 0; ok && d < o->depth; d++) {
        struct slot *s = &cl->slots[d];
        s->cl = cl;
        s->put = calloc(o->batch, sizeof *s->put);
        s->get = calloc(o->batch, sizeof *s->get);
        ok = s->put && s->get;
        for (uint32_t b = 0; ok && o->do_get && !o->shared && b < o->batch; b++)
            ok = (s->get[b].buf = malloc(o->size)) != NULL;
    }
    kvtc_conn_params p = {.field_mask = KVTC_CONN_PARAM_FIELD_CLIENT_NAME,
                          .client_name = "kvtc-bench"};
    int rc = ok ? kvtc_connect(kvtc_cli_server(cl->g), &p, &cl->conn) : KVTC_ENOMEM;
    if (rc) {
        cl->err = rc;
        snprintf(cl->errmsg, sizeof cl->errmsg, "connect: %s",
                 ok ? kvtc_last_error(NULL) : "out of memory");
        atomic_store(&any_error, 1);
    } else if (o->shared && (rc = shared_buffers(cl))) {
        cl->err = rc;
        atomic_store(&any_error, 1);
    }
    for (int phase = 0; phase < 2; phase++) {
        int active = phase == 0 ? o->do_put : o->do_get;
        if (!active)
            continue;
        cl->phase_put = phase == 0;
        pthread_barrier_wait(&barrier); /* everyone connected / phase start */
        if (!cl->err)
            run_phase(cl);
        pthread_barrier_wait(&barrier); /* phase end */
        pthread_barrier_wait(&barrier); /* main took the numbers */
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct result {
    double seconds, gbps, ops_per_s, p50, p99, max, mean;
    uint64_t ops;
};

static struct result summarize(struct client *cls, uint32_t n, double seconds,
                               const struct bench_opts *o)
{
    struct result r = {.seconds = seconds};
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += cls[i].n_lat;
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    double sum = 0;
    for (uint32_t i = 0; i < n; i++)
        for (size_t j = 0; j < cls[i].n_lat && all; j++) {
            all[k++] = cls[i].lat[j];
            sum += cls[i].lat[j];
        }
    r.ops = total;
    if (all && total) {
        qsort(all, total, sizeof *all, cmp_double);
        r.p50 = all[(size_t)floor(0.50 * (double)(total - 1))];
        r.p99 = all[(size_t)floor(0.99 * (double)(total - 1))];
        r.max = all[total - 1];
        r.mean = sum / (double)total;
    }
    free(all);
    r.ops_per_s = seconds > 0 ? (double)total / seconds : 0;
    r.gbps = seconds > 0 ? (double)total * o->batch * (double)o->size / seconds / 1e9 : 0;
    for (uint32_t i = 0; i < n; i++)
        cls[i].n_lat = 0;
    return r;
}

static void print_result(const char *op, const struct result *r, int json, int first)
{
    if (json) {
        printf("%s\"%s\":{\"ops\":%llu,\"seconds\":%.6f,\"gb_per_s\":%.4f,\"ops_per_s\":%.1f,"
               "\"lat_us\":{\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f,\"mean\":%.1f}}",
               first ? "" : ",", op, (unsigned long long)r->ops, r->seconds, r->gbps,
               r->ops_per_s, r->p50 * 1e6, r->p99 * 1e6, r->max * 1e6, r->mean * 1e6);
        return;
    }
    printf("%-4s %8llu ops  %9.3f s  %8.3f GB/s  %10.1f ops/s  p50 %9.1f us  p99 %9.1f us  max %9.1f us\n",
           op, (unsigned long long)r->ops, r->seconds, r->gbps, r->ops_per_s, r->p50 * 1e6,
           r->p99 * 1e6, r->max * 1e6);
}

/* Wait for the phase, showing progress on a terminal. */
static double wait_phase(uint64_t total, int tty)
{
    double t0 = kvtc_cli_now();
    pthread_barrier_wait(&barrier); /* start */
    t0 = kvtc_cli_now();
    if (tty) {
        /* Progress runs beside the clients until they all passed the end
         * barrier, which the main thread joins right after. */
        while (atomic_load(&done_ops) < total && !atomic_load(&any_error)) {
            fprintf(stderr, "\r  %llu / %llu ops", (unsigned long long)atomic_load(&done_ops),
                    (unsigned long long)total);
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        fprintf(stderr, "\r%40s\r", "");
    }
    pthread_barrier_wait(&barrier); /* end */
    return kvtc_cli_now() - t0;
}

static void cleanup_keys(const struct kvtc_cli_global *g, const struct bench_opts *o)
{
    kvtc_conn *c = NULL;
    if (kvtc_connect(kvtc_cli_server(g), NULL, &c))
        return;
    uint64_t n = o->count * o->batch;
    kvtc_key keys[DELETE_BATCH];
    for (uint64_t i = 0; i < n;) {
        size_t m = 0;
        for (; m < DELETE_BATCH && i < n; m++, i++)
            keys[m] = bench_key(i);
        if (kvtc_delete(c, keys, m, NULL, NULL) == KVTC_ECONN)
            break;
    }
    kvtc_disconnect(c);
}

int kvtc_cmd_bench(const struct kvtc_cli_global *g, int argc, char **argv)
{
    struct bench_opts o = {.size = 1 << 20, .count = 256, .clients = 1, .depth = 1,
                           .batch = 1, .do_put = 1, .do_get = 1};
    struct kvtc_cli_args a;
    int rc = kvtc_cli_scan(g, "bench", argc, argv, bench_opt, &o, &a);
    if (rc)
        return rc;
    if (a.help) {
        printf("usage: kvtc [-s HOST:PORT] bench [--op put|get|both] [--size SIZE]\n"
               "       [--count N] [--clients C] [--depth D] [--batch B] [--verify]\n"
               "       [--keep] [--id N] [--shared] [--json]\n"
               "Put COUNT operations of BATCH chunks of SIZE bytes (256K, 4M, ...), then\n"
               "get them back, from C client threads (one connection each) with D\n"
               "operations in flight per client. Prints throughput and latency\n"
               "percentiles per phase; --json prints one JSON object. The chunks are\n"
               "deleted afterwards unless --keep; --id N names the key space, so a\n"
               "'--op get --id N' run reads what a '--op put --keep --id N' run stored\n"
               "(--verify then needs the same --size). --shared: buffers from\n"
               "kvtc_mem_alloc, which kvtcd on this host copies into and out of directly\n"
               "(fails where it cannot). Defaults: both, 1M, 256, 1, 1, 1.\n");
        return 0;
    }
    if (a.n_pos)
        return kvtc_cli_usage(&a, "takes no positional arguments");
    if (o.clients > MAX_CLIENTS || o.depth > MAX_DEPTH || o.batch > 4096)
        return kvtc_cli_usage(&a, "--clients <= 1024, --depth <= 256, --batch <= 4096");
    if (o.count < o.clients)
        o.clients = (uint32_t)o.count;
    if (o.size > ((uint64_t)1 << 32))
        return kvtc_cli_usage(&a, "--size at most 4G");
    if (o.id)
        memcpy(run_id, &o.id, sizeof run_id);
    else
        fill_pattern(run_id, sizeof run_id, (uint64_t)time(NULL) ^ (uint64_t)getpid() << 20);
    uint8_t *src = malloc(o.size);
    struct client *cls = calloc(o.clients, sizeof *cls);
    pthread_t *th = calloc(o.clients, sizeof *th);
    int ret = 1;
    if (!src || !cls || !th) {
        kvtc_cli_fail(&a, "setup", KVTC_ENOMEM, NULL);
        goto out;
    }
    /* Payload bytes follow the key space, so --verify works across runs. */
    uint64_t seed;
    memcpy(&seed, run_id, sizeof seed);
    fill_pattern(src, o.size, seed);
    src_buf = src;
    atomic_store(&any_error, 0);
    pthread_barrier_init(&barrier, NULL, o.clients + 1);
    uint64_t per = o.count / o.clients, extra = o.count % o.clients, first = 0;
    for (uint32_t i = 0; i < o.clients; i++) {
        cls[i] = (struct client){.idx = (int)i, .g = g, .o = &o, .first_op = first,
                                 .n_ops = per + (i < extra)};
        first += cls[i].n_ops;
        cls[i].lat = malloc((cls[i].n_ops ? cls[i].n_ops : 1) * sizeof(double));
        if (!cls[i].lat) {
            kvtc_cli_fail(&a, "setup", KVTC_ENOMEM, NULL);
            goto out; /* no thread started yet */
        }
    }
    for (uint32_t i = 0; i < o.clients; i++)
        pthread_create(&th[i], NULL, client_main, &cls[i]);
    int tty = isatty(STDERR_FILENO);
    struct result res[2];
    for (int phase = 0; phase < 2; phase++) {
        if (!(phase == 0 ? o.do_put : o.do_get))
            continue;
        atomic_store(&done_ops, 0);
        double secs = wait_phase(o.count, tty);
        res[phase] = summarize(cls, o.clients, secs, &o);
        pthread_barrier_wait(&barrier);
    }
    for (uint32_t i = 0; i < o.clients; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    const struct client *bad = NULL;
    for (uint32_t i = 0; i < o.clients && !bad; i++)
        if (cls[i].err)
            bad = &cls[i];
    for (uint32_t i = 0; i < o.clients; i++)
        kvtc_disconnect(cls[i].conn);
    if (!o.keep && o.do_put)
        cleanup_keys(g, &o);
    if (bad) {
        kvtc_cli_fail(&a, "bench", bad->err, bad->errmsg);
        goto out;
    }
    if (a.json) {
        printf("{\"server\":\"%s\",\"size\":%llu,\"count\":%llu,\"clients\":%u,\"depth\":%u,"
               "\"batch\":%u,", kvtc_cli_server(g), (unsigned long long)o.size,
               (unsigned long long)o.count, o.clients, o.depth, o.batch);
        int firstp = 1;
        if (o.do_put)
            print_result("put", &res[0], 1, firstp), firstp = 0;
        if (o.do_get)
            print_result("get", &res[1], 1, firstp);
        printf("}\n");
    } else {
        printf("kvtc bench: %s, %llu x %u x %llu bytes, %u client(s), depth %u\n",
               kvtc_cli_server(g), (unsigned long long)o.count, o.batch,
               (unsigned long long)o.size, o.clients, o.depth);
        if (o.do_put)
            print_result("put", &res[0], 0, 1);
        if (o.do_get)
            print_result("get", &res[1], 0, 1);
    }
    ret = 0;
out:
    if (cls)
        for (uint32_t i = 0; i < o.clients; i++) {
            free(cls[i].lat);
            for (uint32_t d = 0; cls[i].slots && d < o.depth; d++) {
                for (uint32_t b = 0; cls[i].slots[d].get && !o.shared && b < o.batch; b++)
                    free(cls[i].slots[d].get[b].buf); /* --shared: disconnect freed them */
                free(cls[i].slots[d].put);
                free(cls[i].slots[d].get);
            }
            free(cls[i].slots);
        }
    free(cls);
    free(th);
    free(src);
    return ret;
}
