// Reference output-stationary array of ROWS x COLS int8 MACs with 32-bit accumulators and a skip
// input per output element (VELCRO masks), requantizing to int8/uint8 in fixed point.
// docs/rtl.md describes the ports, the handshakes, the timing and the vector files that drive it.
//
// A tile (one fold): PE (r, c) computes output pixel r of the tile for filter c of the tile. The
// tile streams T = (C_in/groups)*kh*kw operand rows; row t carries one activation per array row
// (in_act, row r in bits [8r+7:8r]) and one weight per array column (in_wgt, column c in bits
// [8c+7:8c]); in_last marks row T-1. The tile_* ports are sampled with the tile's first row.
// Rows enter the array skewed (row r r cycles late, column c c cycles late), so PE (r, c) sees
// operand row t in cycle t + r + c after it is accepted, plus one port stage.
// One fold's wavefront is in the array at a time: after a tile's last row, in_ready stays low for
// ROWS + COLS - 2 cycles, until the corner PE has taken that row (T + ROWS + COLS - 2 cycles per
// tile, the fold length of docs/simulator.md). Then all accumulators are copied in one cycle into
// output registers, and the tile's results leave one array row per cycle (out_row 0 .. ROWS-1)
// through the requantizers, while the next tile computes.
// ROWS and COLS must both be at least 2.
module velcro_os_array #(
    parameter ROWS = 8,
    parameter COLS = 8
) (
    input  wire                   clk,
    input  wire                   rst_n,
    // Layer configuration: held for the whole layer.
    input  wire                   cfg_in_signed,       // 1: int8 activations, 0: uint8
    input  wire signed [8:0]      cfg_in_zero_point,
    input  wire signed [8:0]      cfg_out_zero_point,
    input  wire signed [8:0]      cfg_out_min,         // output clamp, e.g. -128 and 127 for int8
    input  wire signed [8:0]      cfg_out_max,
    // Tile configuration: sampled with the tile's first operand row.
    input  wire [ROWS*COLS-1:0]   tile_skip,           // bit r*COLS + c: element (r, c) is masked
    input  wire [ROWS*COLS*8-1:0] tile_const,          // bits 8(r*COLS + c) +: 8: its constant
    input  wire [COLS*32-1:0]     tile_bias,           // per column: int32 bias
    input  wire [COLS*32-1:0]     tile_mult,           // per column: int32 multiplier M
    input  wire [COLS*8-1:0]      tile_shift,          // per column: signed shift (TFLite's)
    // Operand rows: valid/ready handshake.
    input  wire                   in_valid,
    output wire                   in_ready,
    input  wire                   in_last,
    input  wire [ROWS*8-1:0]      in_act,
    input  wire [COLS*8-1:0]      in_wgt,
    // Results: one array row per cycle, no backpressure.
    output wire                   out_valid,
    output reg  [15:0]            out_row,
    output wire [COLS-1:0]        out_skip,
    output wire [COLS*32-1:0]     out_acc,             // acc + bias; 0 where masked
    output wire [COLS*8-1:0]      out_q,               // requantized; the constant where masked
    output reg  [31:0]            mac_count            // MACs issued since reset (wraps)
);
    localparam WAIT = ROWS + COLS - 2;
    localparam EVENTS = ROWS + COLS + 1;
    localparam TAIL_AT = ROWS + COLS - 2;  // event stage in cycle t_last + ROWS + COLS - 1
    localparam CAPTURE_AT = ROWS + COLS;   // event stage in cycle t_last + ROWS + COLS + 1
    localparam N = ROWS * COLS;
    localparam LAST_ROW_INT = ROWS - 1;
    localparam [15:0] LAST_ROW = LAST_ROW_INT[15:0];

    // ---- Input handshake and tile configuration -------------------------------------------
    reg  [15:0] wait_cnt;
    reg         first_pending;
    assign in_ready = (wait_cnt == 16'd0);
    wire accept = in_valid & in_ready;
    wire accept_first = accept & first_pending;
    wire accept_last = accept & in_last;

    always @(posedge clk) begin
        if (!rst_n) begin
            wait_cnt <= 16'd0;
            first_pending <= 1'b1;
        end else begin
            if (accept_last) wait_cnt <= WAIT[15:0];
            else if (wait_cnt != 16'd0) wait_cnt <= wait_cnt - 16'd1;
            if (accept) first_pending <= in_last;
        end
    end

    reg [N-1:0]      cfg_skip;
    reg [N*8-1:0]    cfg_const;
    reg [COLS*32-1:0] cfg_bias, cfg_mult;
    reg [COLS*8-1:0] cfg_shift;
    always @(posedge clk) begin
        if (accept_first) begin
            cfg_skip <= tile_skip;
            cfg_const <= tile_const;
            cfg_bias <= tile_bias;
            cfg_mult <= tile_mult;
            cfg_shift <= tile_shift;
        end
    end

    // ---- Port stage: subtract the input zero point -----------------------------------------
    reg              v_stage, f_stage;
    reg [ROWS*9-1:0] a_stage;
    reg [COLS*8-1:0] w_stage;
    integer r;
    always @(posedge clk) begin
        if (!rst_n) begin
            v_stage <= 1'b0;
            f_stage <= 1'b0;
        end else begin
            v_stage <= accept;
            f_stage <= accept_first;
        end
    end
    always @(posedge clk) begin
        if (accept) begin
            for (r = 0; r < ROWS; r = r + 1)
                a_stage[r*9 +: 9] <= {cfg_in_signed & in_act[r*8+7], in_act[r*8 +: 8]} - cfg_in_zero_point;
            w_stage <= in_wgt;
        end
    end

    // ---- Fold events: timed from the acceptance of a tile's last row -----------------------
    reg [EVENTS-1:0] events;
    always @(posedge clk) begin
        if (!rst_n) events <= {EVENTS{1'b0}};
        else events <= {events[EVENTS-2:0], accept_last};
    end
    wire ev_tail = events[TAIL_AT];        // the corner PE takes the tile's last row this cycle
    wire ev_capture = events[CAPTURE_AT];  // every accumulator holds the tile's result

    // The tile's configuration as its wavefront leaves the array (the next tile may reload cfg_*).
    reg [N-1:0]       tail_skip;
    reg [N*8-1:0]     tail_const;
    reg [COLS*32-1:0] tail_bias, tail_mult;
    reg [COLS*8-1:0]  tail_shift;
    always @(posedge clk) begin
        if (ev_tail) begin
            tail_skip <= cfg_skip;
            tail_const <= cfg_const;
            tail_bias <= cfg_bias;
            tail_mult <= cfg_mult;
            tail_shift <= cfg_shift;
        end
    end

    // ---- Skew, PE grid ---------------------------------------------------------------------
    // Nets between PEs as arrays of small nets (not slices of one wide vector, which an
    // event-driven simulator re-evaluates as a whole on every change).
    /* verilator lint_off UNUSEDSIGNAL */
    wire signed [8:0]  a_h [0:ROWS-1][0:COLS];  // a_h[i][j]: into PE (i, j) from the left
    wire               v_h [0:ROWS-1][0:COLS];
    wire               f_h [0:ROWS-1][0:COLS];
    wire signed [7:0]  w_v [0:ROWS][0:COLS-1];  // w_v[i][j]: into PE (i, j) from above
    wire [COLS-1:0]    w_skew_v, w_skew_f;      // the weight skew's tokens: only its data is used
    wire [COLS-1:0]    col_valid;               // equal in every column: column 0's is used
    /* verilator lint_on UNUSEDSIGNAL */
    wire               mac_bits [0:N-1];
    wire signed [31:0] result [0:N-1];

    genvar i, j;
    generate
        for (i = 0; i < ROWS; i = i + 1) begin : g_row_skew
            velcro_delay #(.WIDTH(9), .DEPTH(i)) skew (
                .clk(clk), .rst_n(rst_n),
                .v_in(v_stage), .f_in(f_stage), .d_in(a_stage[i*9 +: 9]),
                .v_out(v_h[i][0]), .f_out(f_h[i][0]), .d_out(a_h[i][0])
            );
        end
        for (j = 0; j < COLS; j = j + 1) begin : g_col_skew
            velcro_delay #(.WIDTH(8), .DEPTH(j)) skew (
                .clk(clk), .rst_n(rst_n),
                .v_in(v_stage), .f_in(1'b0), .d_in(w_stage[j*8 +: 8]),
                .v_out(w_skew_v[j]), .f_out(w_skew_f[j]), .d_out(w_v[0][j])
            );
        end
        for (i = 0; i < ROWS; i = i + 1) begin : g_pe_row
            for (j = 0; j < COLS; j = j + 1) begin : g_pe
                velcro_pe pe (
                    .clk(clk), .rst_n(rst_n),
                    .a_in(a_h[i][j]), .w_in(w_v[i][j]), .v_in(v_h[i][j]), .f_in(f_h[i][j]),
                    .skip(cfg_skip[i*COLS+j]),
                    .a_out(a_h[i][j+1]), .w_out(w_v[i+1][j]), .v_out(v_h[i][j+1]), .f_out(f_h[i][j+1]),
                    .capture(ev_capture), .hold(tail_skip[i*COLS+j]),
                    .mac(mac_bits[i*COLS+j]), .result(result[i*COLS+j])
                );
            end
        end
    endgenerate

    // ---- Executed-MAC counter ----------------------------------------------------------------
    reg [31:0] macs_now;
    integer n;
    always @* begin
        macs_now = 32'd0;
        for (n = 0; n < N; n = n + 1) macs_now = macs_now + {31'd0, mac_bits[n]};
    end
    always @(posedge clk) begin
        if (!rst_n) mac_count <= 32'd0;
        else mac_count <= mac_count + macs_now;
    end

    // ---- Capture and drain -----------------------------------------------------------------
    reg [N-1:0]       o_skip;
    reg [N*8-1:0]     o_const;
    reg [COLS*32-1:0] o_bias, o_mult;
    reg [COLS*8-1:0]  o_shift;
    reg               draining;
    reg [15:0]        drain_row;
    always @(posedge clk) begin
        if (ev_capture) begin
            o_skip <= tail_skip;
            o_const <= tail_const;
            o_bias <= tail_bias;
            o_mult <= tail_mult;
            o_shift <= tail_shift;
        end
    end
    always @(posedge clk) begin
        if (!rst_n) begin
            draining <= 1'b0;
            drain_row <= 16'd0;
        end else if (ev_capture) begin
            draining <= 1'b1;
            drain_row <= 16'd0;
        end else if (draining) begin
            if (drain_row == LAST_ROW) draining <= 1'b0;
            drain_row <= drain_row + 16'd1;
        end
    end

    // Row index beside the three requantizer stages.
    reg [15:0] row_d1, row_d2;
    always @(posedge clk) begin
        row_d1 <= drain_row;
        row_d2 <= row_d1;
        out_row <= row_d2;
    end

    generate
        for (j = 0; j < COLS; j = j + 1) begin : g_requant
            wire [31:0] sel_acc = result[drain_row*COLS + j];
            wire        sel_skip = o_skip[drain_row*COLS + j];
            wire [7:0]  sel_const = o_const[(drain_row*COLS + j)*8 +: 8];
            velcro_requant rq (
                .clk(clk), .rst_n(rst_n),
                .v_in(draining), .skip_in(sel_skip),
                .acc_in(sel_acc), .const_in(sel_const),
                .bias(o_bias[j*32 +: 32]), .mult(o_mult[j*32 +: 32]), .shift(o_shift[j*8 +: 8]),
                .out_zero_point(cfg_out_zero_point), .out_min(cfg_out_min), .out_max(cfg_out_max),
                .v_out(col_valid[j]), .skip_out(out_skip[j]),
                .acc_out(out_acc[j*32 +: 32]), .q_out(out_q[j*8 +: 8])
            );
        end
    endgenerate
    assign out_valid = col_valid[0];
endmodule
