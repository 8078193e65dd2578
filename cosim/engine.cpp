// The native co-simulation engine: a Verilated ivshmem device, its clock and its whole
// transport in C++, so that no Python runs per clock cycle.
//
// Built once per device kind by ivhw.cosim.build into a shared library that
// ivhw.cosim.native loads with ctypes. Python joins the server, hands the engine the
// shared-memory mapping, the own eventfds, the other peers' eventfds and the own ID,
// and then calls in once per guest transaction (a register or shared-memory access,
// an interrupt wait) or once per run of a guest-less or firmware-driven device. Each
// call runs clock cycles here until it is done; the transport is served in every
// cycle exactly as ivhw.cosim.bridge (the cocotb engine) serves it:
//
//   mem       the real mmap (posted writes, read data the cycle after)
//   doorbell  write(2) of 1 to the target peer's eventfd, the cycle it leaves the device
//   event     own eventfds, read without blocking every poll_cycles cycles, through a
//             queue that honours event.ready (a counter above 1 is one event)
//   peers     the peer table Python keeps up to date on joins and leaves
//   ident     the own peer ID
//
// While the device is idle (no guest, or the guest waits for an interrupt, and nothing
// moved for a few cycles) the engine sleeps in epoll_wait on the own eventfds, the
// peer library's fd (server messages) and the CLI's stop FIFO. A call returns early
// with a flag when Python has something to do: a server message (F_MEMBER), a stop
// request (F_STOP), the run's time limit (F_LIMIT).
//
// ivhw_device.h (generated next to this file by the build) says which CPU-side port
// the device has (IVHW_BUS_AXIL, IVHW_BUS_PCI or IVHW_BUS_NONE) and where the fields
// of the doorbell word and of the PCI request, completion and MSI-X payloads are, all
// taken from the one Python definition of each (ivhw.sw.regmap, ivhw.hdl.pci.tlp).

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

#include <signal.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "Vtop.h"
#include "ivhw_device.h"
#include "verilated.h"
#if VM_TRACE
#include "verilated_vcd_c.h"
#endif

// Verilator spells the Verilog port a__b as the member a___05Fb
#define PORT(bundle, member) bundle##___05F##member

namespace {

constexpr uint32_t F_STOP = 1, F_MEMBER = 2, F_LIMIT = 4, F_TIMEOUT = 8;
constexpr int BUS_OK = 0, BUS_ERROR = 1, BUS_ABORTED = 2;
constexpr uint32_t TAG_MEMBER = 0x10000, TAG_STOP = 0x10001;
// as ivhw.cosim.bridge: quiet cycles before the device counts as idle, and the grace
// after which an event that produced no interrupt (a masked vector) no longer counts
constexpr uint64_t QUIET_CYCLES = 4, UNSIGNALLED_GRACE = 64;
constexpr size_t MAX_SAMPLES = 100000;
constexpr int MAX_VECTORS = IVHW_MAX_VECTORS;

// SIGTERM/SIGINT to the engine's process: leave the domain cleanly at the next poll
volatile sig_atomic_t signalled = 0;
void on_signal(int) { signalled = 1; }

double monotonic() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  // the clock of Python's time.perf_counter
    return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

uint64_t field(uint64_t word, int lsb, int width) {
    return (word >> lsb) & ((width >= 64) ? ~0ull : ((1ull << width) - 1));
}

// bits lsb..lsb+width-1 of a Verilator wide value (32-bit words, LSB first)
template <typename W>
uint64_t wide_get(const W& w, int lsb, int width) {
    uint64_t out = 0;
    for (int i = 0; i < width; i++) {
        int bit = lsb + i;
        out |= uint64_t((w[bit / 32] >> (bit % 32)) & 1u) << i;
    }
    return out;
}

template <typename W>
void wide_put(W& w, int lsb, int width, uint64_t value) {
    for (int i = 0; i < width; i++) {
        int bit = lsb + i;
        uint32_t mask = 1u << (bit % 32);
        if ((value >> i) & 1)
            w[bit / 32] |= mask;
        else
            w[bit / 32] &= ~mask;
    }
}

}  // namespace

extern "C" {

// Counters, in the order ivhw.cosim.native.COUNTERS names them.
enum {
    C_CYCLES,
    C_EVENTS,
    C_EVENT_STALL_CYCLES,
    C_COALESCED,
    C_DOORBELLS,
    C_DOORBELLS_LOST,
    C_IRQS,
    C_MEM_READS,
    C_MEM_WRITES,
    C_BLOCKS,
    C_POLLS,
    C_COUNT
};

struct ivhw_stats {
    uint64_t counter[C_COUNT];
    double blocked_seconds;
    uint64_t events_by_vector[MAX_VECTORS];
    uint64_t msix[MAX_VECTORS];
    uint64_t wake_to_ring_count;
    uint64_t wake_to_irq_count;
    uint64_t wakes_count;
    double wake_to_ring[MAX_SAMPLES][4];  // seconds, cycles, wake time, ring time
    double wake_to_irq[MAX_SAMPLES][2];   // seconds, cycles
    // the path of one wake from epoll to the guest, monotonic seconds: went to sleep,
    // epoll_wait returned, eventfd read, interrupt sampled, returned to the guest (-1:
    // not yet, or no guest waiting), and the cycles from the read to the interrupt
    double wakes[MAX_SAMPLES][6];
};

}  // extern "C"

namespace {

struct Engine {
    VerilatedContext context;
    Vtop* top = nullptr;
#if VM_TRACE
    VerilatedVcdC* vcd = nullptr;
#endif
    uint64_t sim_time = 0;

    uint8_t* shm = nullptr;
    uint64_t shm_mask = 0;
    uint32_t own_id = 0;
    std::vector<int> own_fds;
    std::unordered_map<uint32_t, std::vector<int>> peers;
    int epoll_fd = -1;

    uint64_t poll_cycles = 8;
    uint64_t msi_stall = 0, msi_held = 0;
    bool no_guest = false;
    bool guest_waiting = false;
    double limit = 0;  // monotonic deadline of the run, 0: none
    uint32_t flags = 0;

    std::deque<uint16_t> events;
    bool ev_driving = false, ev_valid_high = false, acked = false, r_pending = false;
    uint64_t quiet = 0, unsignalled = 0, irqs = 0;
    double wake_time = -1, irq_mark = -1;
    uint64_t wake_cycle = 0, irq_mark_cycle = 0;
    double slept = -1, woke = -1;  // the last sleep in epoll: when it began and ended
    double* wake_trace = nullptr;  // the wakes sample of the interrupt that is due

    ivhw_stats* stats = nullptr;

#if defined(IVHW_UART_CYCLES_PER_BIT)
    // the console: the device's UART transmitter (8N1), decoded here, one line at a time
    uint64_t uart_count = 0;  // cycles to the next sample, 0: waiting for a start bit
    int uart_bit = 0;         // bits sampled in this frame (0..8, 9: the stop bit)
    uint32_t uart_byte = 0;
    std::string uart_line;
    std::vector<std::string> console;

    void uart(bool tx) {
        if (!uart_count) {
            if (!tx) {  // start bit: sample the data bits in their middle
                uart_count = IVHW_UART_CYCLES_PER_BIT + IVHW_UART_CYCLES_PER_BIT / 2;
                uart_bit = 0;
                uart_byte = 0;
            }
            return;
        }
        if (--uart_count) return;
        if (uart_bit < 8) {
            uart_byte |= uint32_t(tx) << uart_bit++;
            uart_count = IVHW_UART_CYCLES_PER_BIT;
            return;
        }
        // the stop bit's middle: the frame is done (a low stop bit is a framing error: dropped)
        if (tx) {
            if (uart_byte == '\n') {
                std::printf("[soc] %s\n", uart_line.c_str());
                std::fflush(stdout);
                console.push_back(uart_line);
                uart_line.clear();
            } else if (uart_byte != '\r') {
                uart_line.push_back(char(uart_byte));
            }
        }
        uart_count = 0;
    }
#endif

#if defined(IVHW_BUS_AXIL)
    bool s_awready = false, s_bvalid = false, s_arready = false, s_rvalid = false;
    uint32_t s_bresp = 0, s_rresp = 0, s_rdata = 0;
#elif defined(IVHW_BUS_PCI)
    bool s_req_ready = false, s_cpl_valid = false;
    uint64_t s_cpl = 0;
#endif

    uint64_t& counter(int which) { return stats->counter[which]; }

    void eval() {
        top->eval();
#if VM_TRACE
        if (vcd) vcd->dump(sim_time);
#endif
        sim_time += 5;  // 10 ns clock, as the cocotb engine's
    }

    // -- events ---------------------------------------------------------------------------

    void take(uint32_t vector, uint64_t count) {
        events.push_back(uint16_t(vector));
        counter(C_EVENTS)++;
        if (vector < uint32_t(MAX_VECTORS)) stats->events_by_vector[vector]++;
        counter(C_COALESCED) += count - 1;
        double now = -1;
        if (wake_time < 0) {
            wake_time = now = monotonic();
            wake_cycle = counter(C_CYCLES);
            irq_mark = wake_time;
            irq_mark_cycle = wake_cycle;
        }
        if (!wake_trace && stats->wakes_count < MAX_SAMPLES) {
            if (now < 0) now = monotonic();
            double* w = wake_trace = stats->wakes[stats->wakes_count++];
            bool asleep = woke >= 0;  // this poll was a sleep in epoll
            w[0] = asleep ? slept : -1;
            w[1] = asleep ? woke : now;
            w[2] = now;
            w[3] = w[4] = -1;
            w[5] = double(counter(C_CYCLES));  // until the interrupt: its cycle count
        }
    }

    // one epoll_wait: own eventfds become events; a server message is left to Python
    // (F_MEMBER), which lets the peer library read it and updates the peer table
    void poll(int timeout_ms) {
        epoll_event ready[72];
        counter(C_POLLS)++;
        int n = epoll_wait(epoll_fd, ready, 72, timeout_ms);
        if (signalled) flags |= F_STOP;
        if (n <= 0) return;
        if (slept >= 0) woke = monotonic();
        for (int i = 0; i < n; i++) {
            uint32_t tag = ready[i].data.u32;
            if (tag == TAG_STOP) {
                flags |= F_STOP;
            } else if (tag == TAG_MEMBER) {
                flags |= F_MEMBER;
            } else if (tag < own_fds.size()) {
                uint64_t count = 0;
                if (::read(own_fds[tag], &count, 8) == 8) take(tag, count);
            }
        }
    }

    void check_limit() {
        if (limit > 0 && monotonic() >= limit) flags |= F_LIMIT;
    }

    bool idle() const {
        return quiet >= QUIET_CYCLES && events.empty() &&
               (!unsignalled || quiet >= UNSIGNALLED_GRACE);
    }

    // sleep in epoll until an fd fires or `deadline` (monotonic; 0: none) passes
    void block(double deadline) {
        double until = limit;
        if (deadline > 0 && (until <= 0 || deadline < until)) until = deadline;
        int timeout_ms = -1;
        double began = monotonic();
        if (until > 0) {
            double left = until - began;
            timeout_ms = left <= 0 ? 0 : int(left * 1000.0) + 1;
        }
        counter(C_BLOCKS)++;
        slept = began;
        poll(timeout_ms);
        double ended = monotonic();
        stats->blocked_seconds += ended - began;
        slept = woke = -1;
        check_limit();
    }

    // -- one clock cycle ------------------------------------------------------------------

    void ring(uint32_t word) {
        uint32_t target = uint32_t(field(word, IVHW_DOORBELL_PEER_LSB, IVHW_DOORBELL_PEER_WIDTH));
        uint32_t vector =
            uint32_t(field(word, IVHW_DOORBELL_VECTOR_LSB, IVHW_DOORBELL_VECTOR_WIDTH));
        double rang = monotonic();
        const std::vector<int>* fds = nullptr;
        if (target == own_id) {
            fds = &own_fds;
        } else {
            auto found = peers.find(target);
            if (found != peers.end()) fds = &found->second;
        }
        static const uint64_t one = 1;
        if (fds && vector < fds->size() && ::write((*fds)[vector], &one, 8) == 8)
            counter(C_DOORBELLS)++;
        else
            counter(C_DOORBELLS_LOST)++;  // the peer left after the device checked it
        if (wake_time >= 0) {
            uint64_t n = stats->wake_to_ring_count;
            if (n < MAX_SAMPLES) {
                double* s = stats->wake_to_ring[n];
                s[0] = rang - wake_time;
                s[1] = double(counter(C_CYCLES) - wake_cycle);
                s[2] = wake_time;
                s[3] = rang;
                stats->wake_to_ring_count = n + 1;
            }
            wake_time = -1;
        }
        // a device whose interrupt stays inside (a CPU) answered before anyone saw one
        if (wake_trace && wake_trace[3] < 0 && !guest_waiting) wake_trace = nullptr;
    }

    bool msi_taken() {
        if (msi_held < msi_stall) {
            if (++msi_held == msi_stall) set_msi_ready(1);  // the message goes at the next edge
            return false;
        }
        set_msi_ready(0);
        msi_held = 0;
        return true;
    }

    void set_msi_ready(int value) {
#if defined(IVHW_BUS_PCI)
        top->PORT(msi, ready) = value;
#else
        (void)value;
#endif
    }

    // Settle the inputs written since the last edge, sample what the flip-flops see,
    // clock, then serve the transport from the sampled values (the cocotb engine's
    // _service at a rising edge, with the pre-edge values).
    void cycle() {
        Vtop* t = top;
        t->clk = 0;
        eval();
        bool db_valid = t->PORT(doorbell, valid);
        uint32_t db_payload = t->PORT(doorbell, payload);
        bool mem_valid = t->PORT(mem, valid);
        bool mem_we = t->PORT(mem, we);
        uint64_t mem_addr = t->PORT(mem, addr);
        uint32_t mem_wdata = t->PORT(mem, w_data);
        uint32_t mem_sel = t->PORT(mem, sel);
        bool pq_req = t->PORT(peers, req);
        uint32_t pq_peer = t->PORT(peers, peer);
        bool ev_ready = t->PORT(event, ready);
#if defined(IVHW_BUS_AXIL)
        bool irq = t->irq;
        s_awready = t->PORT(axil, awready);
        s_bvalid = t->PORT(axil, bvalid);
        s_bresp = t->PORT(axil, bresp);
        s_arready = t->PORT(axil, arready);
        s_rvalid = t->PORT(axil, rvalid);
        s_rresp = t->PORT(axil, rresp);
        s_rdata = t->PORT(axil, rdata);
#elif defined(IVHW_BUS_PCI)
#if defined(IVHW_IRQ_INTX)
        bool irq = t->intx;  // a revision 2 function's INTx: one pulse per interrupt
#else
        bool irq = t->PORT(msi, valid);
        uint32_t msi_data = uint32_t(wide_get(t->PORT(msi, payload), IVHW_MSI_DATA_LSB, 32));
#endif
        s_req_ready = t->PORT(req, ready);
        s_cpl_valid = t->PORT(cpl, valid);
        s_cpl = t->PORT(cpl, payload);
#else
        bool irq = false;  // a firmware-driven device takes its interrupts inside
#endif
#if defined(IVHW_UART_CYCLES_PER_BIT)
        uart(t->uart_tx);
#endif
#if defined(IVHW_HAS_SLEEPING)
        guest_waiting = t->sleeping;  // the CPU inside waits for an interrupt
#endif
        t->clk = 1;
        eval();
        uint64_t cycle = ++counter(C_CYCLES);
        bool active = false;
        // outbound doorbells (doorbell.ready is always high)
        if (db_valid) {
            active = true;
            ring(db_payload);
        }
        // shared memory (mem.ready is always high)
        if (r_pending) {
            t->PORT(mem, r_valid) = 0;
            r_pending = false;
        }
        if (mem_valid) {
            active = true;
            uint64_t offset = (mem_addr << 2) & shm_mask;
            uint8_t* word = shm + offset;
            if (mem_we) {
                if ((mem_sel & 0xF) == 0xF) {
                    std::memcpy(word, &mem_wdata, 4);
                } else {
                    for (int lane = 0; lane < 4; lane++)
                        if ((mem_sel >> lane) & 1) word[lane] = uint8_t(mem_wdata >> (8 * lane));
                }
                counter(C_MEM_WRITES)++;
            } else {
                uint32_t value;
                std::memcpy(&value, word, 4);
                t->PORT(mem, r_data) = value;
                t->PORT(mem, r_valid) = 1;
                r_pending = true;
                counter(C_MEM_READS)++;
            }
        }
        // peer query
        if (acked) {
            t->PORT(peers, ack) = 0;
            acked = false;
        } else if (pq_req) {
            active = true;
            uint32_t asked = pq_peer & 0xFFFF;
            uint64_t count = 0;
            if (asked == own_id) {
                count = own_fds.size();
            } else {
                auto found = peers.find(asked);
                if (found != peers.end()) count = found->second.size();
            }
            t->PORT(peers, vectors) = count < uint64_t(MAX_VECTORS) ? count : MAX_VECTORS;
            t->PORT(peers, ack) = 1;
            acked = true;
        }
        // interrupt
        if (irq) {
            active = true;
            if (!msi_stall || msi_taken()) {
#if defined(IVHW_BUS_PCI) && !defined(IVHW_IRQ_INTX)
                uint32_t vector = msi_data - IVHW_MSI_DATA_BASE;
                if (vector < uint32_t(MAX_VECTORS)) stats->msix[vector]++;
#endif
                if (unsignalled) unsignalled--;
                irqs++;
                counter(C_IRQS)++;
                if (irq_mark >= 0) {
                    double now = monotonic();
                    uint64_t n = stats->wake_to_irq_count;
                    if (n < MAX_SAMPLES) {
                        stats->wake_to_irq[n][0] = now - irq_mark;
                        stats->wake_to_irq[n][1] = double(cycle - irq_mark_cycle);
                        stats->wake_to_irq_count = n + 1;
                    }
                    irq_mark = -1;
                }
                if (wake_trace && wake_trace[3] < 0) {
                    wake_trace[3] = monotonic();
                    wake_trace[5] = double(cycle) - wake_trace[5];
                    if (!guest_waiting) wake_trace = nullptr;  // nobody to return to
                }
            }
        }
        // inbound events (held until ready: back-pressure never loses one)
        if (ev_driving) {
            if (ev_ready) {
                ev_driving = false;
                events.pop_front();
                unsignalled++;  // its interrupt is due within a few cycles
            } else {
                counter(C_EVENT_STALL_CYCLES)++;
            }
        }
        if (!ev_driving) {
            if (!events.empty()) {
                t->PORT(event, payload) = events.front();
                t->PORT(event, valid) = 1;
                ev_driving = true;
            } else if (ev_valid_high) {
                t->PORT(event, valid) = 0;
            }
            ev_valid_high = ev_driving;
        }
        if (ev_driving) active = true;
        quiet = active ? 0 : quiet + 1;
        if (cycle % poll_cycles == 0) {
            poll(0);
            check_limit();
        }
    }

    bool interrupted() const { return flags & (F_STOP | F_LIMIT); }

    // run cycles until the sampled handshake signal `ready` is high; false if the run
    // is to stop first (a device that never answers cannot hang the simulator)
    bool cycle_until(const bool& ready) {
        do {
            cycle();
            if (interrupted()) return false;
        } while (!ready);
        return true;
    }

    // -- the CPU side ---------------------------------------------------------------------

#if defined(IVHW_BUS_AXIL)
    int write(uint64_t addr, uint32_t value, uint32_t strb, uint64_t* out) {
        Vtop* t = top;
        t->PORT(axil, awaddr) = addr;
        t->PORT(axil, wdata) = value;
        t->PORT(axil, wstrb) = strb;
        t->PORT(axil, awvalid) = 1;
        t->PORT(axil, wvalid) = 1;
        if (!cycle_until(s_awready)) return BUS_ABORTED;
        t->PORT(axil, awvalid) = 0;
        t->PORT(axil, wvalid) = 0;
        if (!cycle_until(s_bvalid)) return BUS_ABORTED;
        quiet = 0;  // a doorbell leaves the FIFO after the write's ack
        *out = s_bresp;
        return s_bresp ? BUS_ERROR : BUS_OK;
    }

    int read(uint64_t addr, uint64_t* out) {
        Vtop* t = top;
        t->PORT(axil, araddr) = addr;
        t->PORT(axil, arvalid) = 1;
        if (!cycle_until(s_arready)) return BUS_ABORTED;
        t->PORT(axil, arvalid) = 0;
        if (!cycle_until(s_rvalid)) return BUS_ABORTED;
        quiet = 0;
        *out = s_rresp ? s_rresp : s_rdata;  // the response code on an error
        return s_rresp ? BUS_ERROR : BUS_OK;
    }

    int request(int kind, uint64_t addr, uint32_t be, uint32_t data, uint64_t* out) {
        (void)kind;
        (void)addr;
        (void)be;
        (void)data;
        (void)out;
        return BUS_ERROR;
    }
#elif defined(IVHW_BUS_PCI)
    int request(int kind, uint64_t addr, uint32_t be, uint32_t data, uint64_t* out) {
        Vtop* t = top;
        wide_put(t->PORT(req, payload), IVHW_REQ_KIND_LSB, IVHW_REQ_KIND_WIDTH, uint64_t(kind));
        wide_put(t->PORT(req, payload), IVHW_REQ_ADDR_LSB, IVHW_REQ_ADDR_WIDTH, addr & ~3ull);
        wide_put(t->PORT(req, payload), IVHW_REQ_BE_LSB, IVHW_REQ_BE_WIDTH, be & 0xF);
        wide_put(t->PORT(req, payload), IVHW_REQ_DATA_LSB, IVHW_REQ_DATA_WIDTH, data);
        t->PORT(req, valid) = 1;
        if (!cycle_until(s_req_ready)) return BUS_ABORTED;
        t->PORT(req, valid) = 0;
        if (!cycle_until(s_cpl_valid)) return BUS_ABORTED;
        quiet = 0;
        *out = field(s_cpl, IVHW_CPL_DATA_LSB, IVHW_CPL_DATA_WIDTH);
        return field(s_cpl, IVHW_CPL_STATUS_LSB, IVHW_CPL_STATUS_WIDTH) ? BUS_ERROR : BUS_OK;
    }

    int write(uint64_t addr, uint32_t value, uint32_t strb, uint64_t* out) {
        return request(IVHW_REQ_MEM_WRITE, addr, strb, value, out);
    }

    int read(uint64_t addr, uint64_t* out) { return request(IVHW_REQ_MEM_READ, addr, 0xF, 0, out); }
#else
    int write(uint64_t, uint32_t, uint32_t, uint64_t*) { return BUS_ERROR; }
    int read(uint64_t, uint64_t*) { return BUS_ERROR; }
    int request(int, uint64_t, uint32_t, uint32_t, uint64_t*) { return BUS_ERROR; }
#endif

    void drive_idle() {
        Vtop* t = top;
        t->PORT(doorbell, ready) = 1;
        t->PORT(event, valid) = 0;
        t->PORT(event, payload) = 0;
        t->PORT(peers, ack) = 0;
        t->PORT(peers, vectors) = 0;
        t->PORT(mem, ready) = 1;
        t->PORT(mem, r_valid) = 0;
        t->PORT(mem, r_data) = 0;
#if defined(IVHW_BUS_AXIL)
        t->PORT(axil, awvalid) = 0;
        t->PORT(axil, wvalid) = 0;
        t->PORT(axil, arvalid) = 0;
        t->PORT(axil, awprot) = 0;
        t->PORT(axil, arprot) = 0;
        t->PORT(axil, bready) = 1;
        t->PORT(axil, rready) = 1;
#elif defined(IVHW_BUS_PCI)
        t->PORT(req, valid) = 0;
        t->PORT(cpl, ready) = 1;
        t->PORT(msi, ready) = msi_stall ? 0 : 1;
#endif
#if defined(IVHW_UART_CYCLES_PER_BIT)
        t->uart_rx = 1;  // an idle line
#endif
    }

    // a plain clock edge, no transport (reset)
    void edge() {
        top->clk = 0;
        eval();
        top->clk = 1;
        eval();
    }
};

}  // namespace

extern "C" {

void* ivhw_new(const char* vcd_path) {
    Engine* e = new Engine();
    e->top = new Vtop(&e->context, "top");
    e->stats = new ivhw_stats();
    std::memset(e->stats, 0, sizeof(ivhw_stats));
    e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
#if VM_TRACE
    if (vcd_path && *vcd_path) {
        e->context.traceEverOn(true);
        e->vcd = new VerilatedVcdC();
        e->top->trace(e->vcd, 99);
        e->vcd->open(vcd_path);
    }
#else
    (void)vcd_path;
#endif
    return e;
}

void ivhw_free(void* handle) {
    Engine* e = static_cast<Engine*>(handle);
#if VM_TRACE
    if (e->vcd) {
        e->vcd->close();
        delete e->vcd;
    }
#endif
    e->top->final();
    delete e->top;
    if (e->epoll_fd >= 0) close(e->epoll_fd);
    delete e->stats;
    delete e;
}

int ivhw_traced(void) { return VM_TRACE; }

// the console lines the device printed (a device with a UART), in order
uint64_t ivhw_console_count(void* handle) {
#if defined(IVHW_UART_CYCLES_PER_BIT)
    return static_cast<Engine*>(handle)->console.size();
#else
    (void)handle;
    return 0;
#endif
}

const char* ivhw_console_line(void* handle, uint64_t index) {
#if defined(IVHW_UART_CYCLES_PER_BIT)
    return static_cast<Engine*>(handle)->console.at(index).c_str();
#else
    (void)handle;
    (void)index;
    return "";
#endif
}

// SIGTERM and SIGINT stop the run at the next poll (Python's handlers would run only
// when a call returns, and a sleeping engine would not return)
void ivhw_catch_signals(void) {
    struct sigaction action{};
    action.sa_handler = on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, nullptr);
    sigaction(SIGINT, &action, nullptr);
}

ivhw_stats* ivhw_stats_of(void* handle) { return static_cast<Engine*>(handle)->stats; }

// the shared memory, the own ID and the run's parameters
void ivhw_configure(void* handle, uint8_t* shm, uint64_t shm_size, uint32_t own_id,
                    uint64_t poll_cycles, uint64_t msi_stall, int no_guest, double limit) {
    Engine* e = static_cast<Engine*>(handle);
    e->shm = shm;
    e->shm_mask = (shm_size - 1) & ~3ull;
    e->own_id = own_id;
    e->poll_cycles = poll_cycles ? poll_cycles : 1;
    e->msi_stall = msi_stall;
    e->no_guest = no_guest;
    e->limit = limit;
}

// what epoll watches: the own eventfds (tags 0..n-1), the peer library's fd, the stop FIFO
int ivhw_watch(void* handle, const int* own_fds, int count, int member_fd, int stop_fd) {
    Engine* e = static_cast<Engine*>(handle);
    e->own_fds.assign(own_fds, own_fds + count);
    auto add = [e](int fd, uint32_t tag) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = tag;
        return epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, fd, &ev);
    };
    for (int i = 0; i < count; i++)
        if (add(own_fds[i], uint32_t(i))) return -errno;
    if (member_fd >= 0 && add(member_fd, TAG_MEMBER)) return -errno;
    if (stop_fd >= 0 && add(stop_fd, TAG_STOP)) return -errno;
    return 0;
}

// peer `id` now has these eventfds (count 0: it left)
void ivhw_set_peer(void* handle, uint32_t id, const int* fds, int count) {
    Engine* e = static_cast<Engine*>(handle);
    if (count <= 0)
        e->peers.erase(id);
    else
        e->peers[id].assign(fds, fds + count);
}

// an own doorbell that Python read (through the peer library) while handling F_MEMBER
void ivhw_push_event(void* handle, uint32_t vector, uint64_t count) {
    static_cast<Engine*>(handle)->take(vector, count);
}

// reset for three edges with the transport idle and the own ID valid
void ivhw_reset(void* handle) {
    Engine* e = static_cast<Engine*>(handle);
    e->drive_idle();
    e->top->PORT(ident, id) = e->own_id;
    e->top->PORT(ident, valid) = 1;
    e->top->rst = 1;
    for (int i = 0; i < 3; i++) e->edge();
    e->top->rst = 0;
    e->edge();
}

// After the guest returned: clock until the transport is quiet (a doorbell its last
// write queued may still be in the device's FIFO: a PCI write completes before it leaves)
void ivhw_drain(void* handle) {
    Engine* e = static_cast<Engine*>(handle);
    e->quiet = 0;
    for (uint64_t i = 0; i < UNSIGNALLED_GRACE && e->quiet < QUIET_CYCLES; i++) e->cycle();
}

// the device's counter ports (revision 2 builds: the order of IVHW_COUNTERS); how many
int ivhw_device_counters(void* handle, uint64_t* out) {
#if defined(IVHW_COUNTERS)
    Vtop* t = static_cast<Engine*>(handle)->top;
    int n = 0;
#define IVHW_READ_COUNTER(name) out[n++] = t->name;
    IVHW_COUNTERS(IVHW_READ_COUNTER)
#undef IVHW_READ_COUNTER
    return n;
#else
    (void)handle;
    (void)out;
    return 0;
#endif
}

uint32_t ivhw_take_flags(void* handle) {
    Engine* e = static_cast<Engine*>(handle);
    uint32_t flags = e->flags;
    e->flags = 0;
    return flags;
}

// Bus transactions return BUS_OK, BUS_ERROR or BUS_ABORTED, plus FLAGGED when flags
// wait (so the common case costs Python one call).
constexpr int FLAGGED = 16;

int ivhw_write(void* handle, uint64_t addr, uint32_t value, uint32_t strb, uint64_t* out) {
    Engine* e = static_cast<Engine*>(handle);
    int status = e->write(addr, value, strb, out);
    return status | (e->flags ? FLAGGED : 0);
}

int ivhw_read(void* handle, uint64_t addr, uint64_t* out) {
    Engine* e = static_cast<Engine*>(handle);
    int status = e->read(addr, out);
    return status | (e->flags ? FLAGGED : 0);
}

int ivhw_request(void* handle, int kind, uint64_t addr, uint32_t be, uint32_t data,
                 uint64_t* out) {
    Engine* e = static_cast<Engine*>(handle);
    int status = e->request(kind, addr, be, data, out);
    return status | (e->flags ? FLAGGED : 0);
}

// Bus transactions in order, each exactly as one ivhw_read / ivhw_write call makes it,
// so that a guest's block access crosses into C once. ops[3i..3i+2]: write?, address,
// value | strb << 32; out[i]: the read data or the response code. Stops after the first
// transaction that did not end BUS_OK with no flag waiting; returns the transactions
// done before it times BURST_STATUS plus its status, or n times BURST_STATUS (all done).
constexpr uint64_t BURST_STATUS = 32;

uint64_t ivhw_burst(void* handle, const uint64_t* ops, uint64_t n, uint64_t* out) {
    Engine* e = static_cast<Engine*>(handle);
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t* op = ops + 3 * i;
        int status = op[0] ? e->write(op[1], uint32_t(op[2]), uint32_t(op[2] >> 32), out + i)
                           : e->read(op[1], out + i);
        status |= e->flags ? FLAGGED : 0;
        if (status != BUS_OK) return i * BURST_STATUS + status;
    }
    return n * BURST_STATUS;
}

// Wait for the device's interrupt: run cycles while it drains, sleep while it is idle.
// Returns the interrupts counted (0: timed out, or returned early with a flag set) times
// WAIT_FLAGS, plus the flags, taken: after a wake Python runs cold (every line it has not
// run lately costs microseconds here), so the wake path is this one call.
constexpr uint64_t WAIT_FLAGS = 16;

uint64_t ivhw_wait_irq(void* handle, double deadline) {
    Engine* e = static_cast<Engine*>(handle);
    e->guest_waiting = true;
    while (!e->irqs && !(e->flags & (F_STOP | F_MEMBER | F_LIMIT))) {
        if (deadline > 0 && monotonic() >= deadline) {
            e->flags |= F_TIMEOUT;
            break;
        }
        if (e->idle()) {
            e->block(deadline);  // nothing can happen until an fd fires
            continue;            // no simulated time needs to pass for nothing
        }
        e->cycle();
    }
    e->guest_waiting = false;
    // a server message already pending reaches Python before the guest runs on: a peer
    // that joined and rang at once is known when the guest looks at the peers
    if (e->irqs) e->poll(0);
    uint64_t count = e->irqs;
    e->irqs = 0;
    uint32_t flags = e->flags;
    e->flags = 0;
    if (count && e->wake_trace) {
        e->wake_trace[4] = monotonic();
        e->wake_trace = nullptr;
    }
    return count * WAIT_FLAGS + flags;
}

// Run with no guest (or a firmware-driven device) until a flag is raised or `deadline`.
// A device with a CPU inside counts as idle only while its `sleeping` port says so.
void ivhw_run(void* handle, double deadline) {
    Engine* e = static_cast<Engine*>(handle);
    while (!(e->flags & (F_STOP | F_MEMBER | F_LIMIT))) {
        if (deadline > 0 && monotonic() >= deadline) {
            e->flags |= F_TIMEOUT;
            break;
        }
#if defined(IVHW_BUS_NONE)
        // a CPU inside: idle only while it sleeps waiting for an interrupt (and the
        // transport is quiet); else its firmware runs, 64 cycles between clock reads
        if (e->guest_waiting && e->idle()) {
            e->block(deadline);
            continue;
        }
        for (int i = 0; i < 64 && !(e->flags & (F_STOP | F_MEMBER | F_LIMIT)); i++) e->cycle();
#else
        if (e->idle())
            e->block(deadline);
        else
            e->cycle();
#endif
    }
    e->irqs = 0;
}

// Cycles of the device alone, for the benchmark: `count` bus accesses back to back on the
// CPU side, the transport served as always. ops[i] = {kind, addr, value}: kind 0 read,
// 1 write. Returns the number of accesses that failed.
uint64_t ivhw_bench_accesses(void* handle, const uint64_t* ops, uint64_t nops, uint64_t count) {
    Engine* e = static_cast<Engine*>(handle);
    uint64_t bad = 0, value = 0;
    for (uint64_t i = 0; i < count; i++) {
        const uint64_t* op = ops + 3 * (i % nops);
        int status = op[0] ? e->write(op[1], uint32_t(op[2]), 0xF, &value) : e->read(op[1], &value);
        if (status != BUS_OK) bad++;
        if (e->interrupted()) break;
    }
    return bad;
}

}  // extern "C"

// The limit for bench.cosim_simspeed: the same Verilated device driven by a C++ loop
// whose transport only answers (memory in a local array, doorbells taken and dropped,
// every peer known with one vector; no eventfd, no epoll, no statistics): what
// Verilator alone costs per cycle.
namespace {

struct Bare {
    Vtop* t;
    std::vector<uint32_t> memory = std::vector<uint32_t>(1u << 16);
    bool r_pending = false, acked = false;
    bool awready = false, bvalid = false, arready = false, rvalid = false;
    uint64_t cycles = 0;

    void cycle() {
        t->clk = 0;
        t->eval();
        bool mem_valid = t->PORT(mem, valid), mem_we = t->PORT(mem, we);
        uint32_t addr = uint32_t(t->PORT(mem, addr)) & 0xFFFF, wdata = t->PORT(mem, w_data);
        bool pq_req = t->PORT(peers, req);
#if defined(IVHW_BUS_AXIL)
        awready = t->PORT(axil, awready);
        bvalid = t->PORT(axil, bvalid);
        arready = t->PORT(axil, arready);
        rvalid = t->PORT(axil, rvalid);
#endif
        t->clk = 1;
        t->eval();
        cycles++;
        if (r_pending) t->PORT(mem, r_valid) = 0, r_pending = false;
        if (mem_valid) {
            if (mem_we)
                memory[addr] = wdata;
            else
                t->PORT(mem, r_data) = memory[addr], t->PORT(mem, r_valid) = 1, r_pending = true;
        }
        if (acked)
            t->PORT(peers, ack) = 0, acked = false;
        else if (pq_req)
            t->PORT(peers, vectors) = 1, t->PORT(peers, ack) = 1, acked = true;
    }
};

}  // namespace

extern "C" {

// `count` accesses as ivhw_bench_accesses makes them (AXI4-Lite devices); the cycles run
uint64_t ivhw_bare_accesses(void* handle, const uint64_t* ops, uint64_t nops, uint64_t count) {
    Bare bare{static_cast<Engine*>(handle)->top};
#if defined(IVHW_BUS_AXIL)
    Vtop* t = bare.t;
    for (uint64_t i = 0; i < count; i++) {
        const uint64_t* op = ops + 3 * (i % nops);
        if (op[0]) {
            t->PORT(axil, awaddr) = op[1];
            t->PORT(axil, wdata) = uint32_t(op[2]);
            t->PORT(axil, wstrb) = 0xF;
            t->PORT(axil, awvalid) = 1;
            t->PORT(axil, wvalid) = 1;
            do bare.cycle();
            while (!bare.awready);
            t->PORT(axil, awvalid) = 0;
            t->PORT(axil, wvalid) = 0;
            do bare.cycle();
            while (!bare.bvalid);
        } else {
            t->PORT(axil, araddr) = op[1];
            t->PORT(axil, arvalid) = 1;
            do bare.cycle();
            while (!bare.arready);
            t->PORT(axil, arvalid) = 0;
            do bare.cycle();
            while (!bare.rvalid);
        }
    }
#else
    (void)ops;
    (void)nops;
    (void)count;
#endif
    return bare.cycles;
}

// `count` cycles of the device with nothing on its CPU side (a CPU inside runs firmware)
uint64_t ivhw_bare_cycles(void* handle, uint64_t count) {
    Bare bare{static_cast<Engine*>(handle)->top};
    while (bare.cycles < count) bare.cycle();
    return bare.cycles;
}

// `count` cycles of the engine as it runs a firmware device, transport and all
uint64_t ivhw_cycles(void* handle, uint64_t count) {
    Engine* e = static_cast<Engine*>(handle);
    uint64_t start = e->counter(C_CYCLES);
    while (e->counter(C_CYCLES) - start < count && !e->interrupted()) e->cycle();
    return e->counter(C_CYCLES) - start;
}

}  // extern "C"
