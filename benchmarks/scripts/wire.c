/* A wire with a delay between the test hosts, for kernels without netem (benchmarks/scripts/netns.py).

   Runs in the switch namespace, where the other end of every host's veth pair is:
       wire DELAY_US PORT...
   It reads every frame a host sends (an AF_PACKET socket on each port), holds it DELAY_US and
   then sends it out of the port behind which its destination MAC was last seen (a learning
   switch: broadcast, multicast and unknown destinations go out of every other port). A frame
   is due DELAY_US after the kernel received it (its SO_TIMESTAMPNS time stamp), and the ring of
   held frames is kept in order of due time; ppoll sleeps to the nanosecond until the first is
   due. While frames are held, one that arrives does not wake the wire: it waits in its socket
   until the wake-up for the first, before which it cannot be due. That halves the wake-ups
   (each costs a context switch, a timer and, at real-time priority, a preempted process): in a
   test of 20 connections' round trips it took the wire from 12-33 us of CPU a frame to 7-9,
   and the two hosts' own CPU back to what they spent over a kernel bridge.

   Frames are read and written with their virtio-net header (PACKET_VNET_HDR), as QEMU's tap
   does: a host's TCP segments of up to 64 KiB (veth's GSO/TSO) and their unfinished checksums
   cross the wire whole, as they cross a veth pair or netem, and the kernel finishes them on the
   way out; so the hosts' offloads stay on and a large response is a few frames here, not one
   per 1,500 bytes. PACKET_IGNORE_OUTGOING keeps the wire's own sends off its sockets.

   Not a proxy: every frame, TCP's handshakes and acknowledgements among them, crosses as it was
   sent, only later. Prints "ready" when its ports are open; on SIGTERM or SIGINT, a JSON line
   on stderr: what it carried; the CPU it spent, user and system (the system time includes the
   receiving hosts' network stack, which the kernel runs in the sender's context); and how late
   past their delay the frames left (the time it took to be woken and to send what was due:
   what a busy machine adds to the delay, measured from the kernel's time stamp). Compiled and
   cached by benchmarks/scripts/netns.py. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23 /* Linux 4.20 */
#endif
#define VNET_HEADER 10            /* struct virtio_net_hdr, before the Ethernet header */
#define LARGEST (VNET_HEADER + 65536 + 64)
#define MAX_PORTS 32
#define RING 65536                /* frames held at once; more are dropped, as by a full queue */
#define MACS 1024
#define BURST 1024                /* frames read from one port before looking at the others */

struct held { int64_t due; uint32_t ports; uint32_t length; unsigned char *frame; };
struct seen { unsigned char mac[6]; int port; };

static struct held ring[RING];
static unsigned head, tail; /* tail: oldest; head: next free */
static struct seen table[MACS];
static int macs;
static struct pollfd polls[MAX_PORTS];
static int nports;
static unsigned long long carried_frames, carried_bytes, dropped;
/* How late frames left, past their due time (the machine's load, the wake-up): in steps of
   LATE_STEP ns, the last step counting all later ones. */
#define LATE_STEP 50000
#define LATE_STEPS 1000
static unsigned long long late[LATE_STEPS], late_total_ns, late_most_ns, released;
static volatile sig_atomic_t stopping;

static int64_t ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static int64_t clock_ns(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return ns(t);
}

static int open_port(const char *name) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
    int one = 1, buffer = 4 << 20;
    struct sockaddr_ll where = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL)};
    where.sll_ifindex = (int)if_nametoindex(name);
    if (fd < 0 || where.sll_ifindex == 0
        || setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one)
        || setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one)
        || setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, sizeof buffer)
        || setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one)
        || bind(fd, (struct sockaddr *)&where, sizeof where)) {
        perror(name);
        exit(1);
    }
    return fd;
}

/* The port a MAC was last seen behind, or -1; `learn` records it. */
static int lookup(const unsigned char *mac) {
    for (int i = 0; i < macs; i++)
        if (memcmp(table[i].mac, mac, 6) == 0) return table[i].port;
    return -1;
}

static void learn(const unsigned char *mac, int port) {
    for (int i = 0; i < macs; i++)
        if (memcmp(table[i].mac, mac, 6) == 0) { table[i].port = port; return; }
    if (macs < MACS) { memcpy(table[macs].mac, mac, 6); table[macs++].port = port; }
}

static void hold(int from, const unsigned char *frame, ssize_t length, int64_t due) {
    const unsigned char *destination = frame + VNET_HEADER, *source = destination + 6;
    learn(source, from);
    int to = (destination[0] & 1) ? -1 : lookup(destination);
    if (to == from) return; /* for a host behind the port it came from */
    uint32_t ports = to >= 0 ? 1u << to : (uint32_t)((1ull << nports) - 1) & ~(1u << from);
    unsigned char *copy = head - tail == RING ? NULL : malloc((size_t)length);
    if (!copy) {
        dropped++;
        return;
    }
    memcpy(copy, frame, (size_t)length);
    /* In order of due time: frames read together from several ports arrived interleaved. */
    unsigned at = head++;
    for (; at != tail && ring[(at - 1) % RING].due > due; at--)
        ring[at % RING] = ring[(at - 1) % RING];
    ring[at % RING] = (struct held){.due = due, .ports = ports, .length = (uint32_t)length,
                                    .frame = copy};
}

/* Every frame waiting at `port`, each due `delay` after the kernel received it (its time
   stamp, CLOCK_REALTIME, less `realtime` to make it monotonic). */
static void receive(int port, int64_t delay, int64_t realtime, int64_t now) {
    static unsigned char frame[LARGEST];
    char control[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec data = {.iov_base = frame, .iov_len = sizeof frame};
    for (int i = 0; i < BURST; i++) {
        struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1, .msg_control = control,
                                 .msg_controllen = sizeof control};
        ssize_t length = recvmsg(polls[port].fd, &message, 0);
        if (length < 0) return; /* EAGAIN: nothing more now */
        int64_t arrived = now;
        struct cmsghdr *c = CMSG_FIRSTHDR(&message);
        if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec stamp;
            memcpy(&stamp, CMSG_DATA(c), sizeof stamp);
            arrived = ns(stamp) - realtime;
        }
        if (length > VNET_HEADER + 14) hold(port, frame, length, arrived + delay);
    }
}

static void release(int64_t now) {
    while (tail != head && ring[tail % RING].due <= now) {
        struct held *h = &ring[tail % RING];
        int64_t behind = now - h->due;
        late[behind / LATE_STEP < LATE_STEPS ? behind / LATE_STEP : LATE_STEPS - 1]++;
        late_total_ns += (unsigned long long)behind;
        if ((unsigned long long)behind > late_most_ns) late_most_ns = (unsigned long long)behind;
        released++;
        for (int port = 0; port < nports; port++) {
            if (!(h->ports & (1u << port))) continue;
            if (send(polls[port].fd, h->frame, h->length, 0) < 0) {
                dropped++; /* the receiving host's backlog is full: lost, as on a wire */
            } else {
                carried_frames++;
                carried_bytes += h->length - VNET_HEADER;
            }
        }
        free(h->frame);
        tail++;
    }
}

/* The step below which 99 % of the frames left, in microseconds. */
static unsigned long long late_p99_us(void) {
    unsigned long long seen = 0;
    for (int step = 0; step < LATE_STEPS; step++)
        if ((seen += late[step]) * 100 >= released * 99) return (step + 1ull) * LATE_STEP / 1000;
    return 0;
}

static void stop(int signal) { (void)signal; stopping = 1; }

int main(int argc, char **argv) {
    if (argc < 3 || argc - 2 > MAX_PORTS) {
        fprintf(stderr, "usage: %s DELAY_US PORT... (at most %d ports)\n", argv[0], MAX_PORTS);
        return 2;
    }
    int64_t delay = atoll(argv[1]) * 1000;
    for (nports = 0; nports < argc - 2; nports++)
        polls[nports] = (struct pollfd){.fd = open_port(argv[nports + 2]), .events = POLLIN};
    struct sigaction on_stop = {.sa_handler = stop}; /* no SA_RESTART: ppoll returns EINTR */
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGINT, &on_stop, NULL);
    printf("ready\n");
    fflush(stdout);
    /* With frames held, sleep until the first is due, not woken by the ones that arrive
       meanwhile: they wait in their sockets with the kernel's time stamp, and none is due
       before the first. With none held, sleep until one arrives. */
    const struct timespec at_once = {0, 0};
    int failed = 0;
    while (!stopping && !failed) {
        if (tail == head) {
            failed = ppoll(polls, (nfds_t)nports, NULL, NULL) < 0 && errno != EINTR;
        } else {
            int64_t left = ring[tail % RING].due - clock_ns(CLOCK_MONOTONIC);
            struct timespec wait = {.tv_sec = left / 1000000000, .tv_nsec = left % 1000000000};
            failed = left > 0 && ppoll(NULL, 0, &wait, NULL) < 0 && errno != EINTR;
            failed |= ppoll(polls, (nfds_t)nports, &at_once, NULL) < 0 && errno != EINTR;
        }
        if (failed) perror("ppoll");
        int64_t now = clock_ns(CLOCK_MONOTONIC), realtime = clock_ns(CLOCK_REALTIME) - now;
        for (int port = 0; port < nports; port++)
            if (polls[port].revents & POLLIN) receive(port, delay, realtime, now);
        release(clock_ns(CLOCK_MONOTONIC));
    }
    struct rusage spent;
    getrusage(RUSAGE_SELF, &spent);
    fprintf(stderr,
            "{\"frames\": %llu, \"bytes\": %llu, \"dropped\": %llu, \"late_mean_us\": %llu, "
            "\"late_p99_us\": %llu, \"late_max_us\": %llu, \"user_ms\": %ld, "
            "\"system_ms\": %ld}\n",
            carried_frames, carried_bytes, dropped, released ? late_total_ns / released / 1000 : 0,
            late_p99_us(), late_most_ns / 1000,
            spent.ru_utime.tv_sec * 1000 + spent.ru_utime.tv_usec / 1000,
            spent.ru_stime.tv_sec * 1000 + spent.ru_stime.tv_usec / 1000);
    return failed;
}
