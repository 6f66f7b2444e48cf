// Requantization of one column's results to int8/uint8, fixed point as gemmlowp and TFLite do it
// (docs/rtl.md): with s = acc + bias,
//   y = clamp(RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(s << left, M), right) + zp,
//             out_min, out_max),
// left = max(shift, 0), right = max(-shift, 0) (TFLite's MultiplyByQuantizedMultiplier; the left
// shift wraps in 32 bits as TFLite's int32 arithmetic does). A masked element bypasses it: its
// accumulator reads 0 and its output is the element's constant; its pipeline registers hold.
// Three stages: bias and left shift | 32x32 product | rounding, zero point, clamp, output select.
module velcro_requant (
    input  wire               clk,
    input  wire               rst_n,
    input  wire               v_in,
    input  wire               skip_in,
    input  wire signed [31:0] acc_in,
    input  wire [7:0]         const_in,
    input  wire signed [31:0] bias,
    input  wire signed [31:0] mult,
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire signed [7:0]  shift,   // in [-31, 31]: bits 6:5 repeat the sign
    /* verilator lint_on UNUSEDSIGNAL */
    input  wire signed [8:0]  out_zero_point,
    input  wire signed [8:0]  out_min,
    input  wire signed [8:0]  out_max,
    output reg                v_out,
    output reg                skip_out,
    output reg  signed [31:0] acc_out,
    output reg  [7:0]         q_out
);
    localparam signed [63:0] NUDGE_POS = 64'sd1073741824;   // 2^30
    localparam signed [63:0] NUDGE_NEG = -64'sd1073741823;  // 1 - 2^30
    localparam signed [63:0] TRUNC_NEG = 64'sd2147483647;   // 2^31 - 1: division toward zero
    localparam signed [31:0] INT32_MIN = 32'sh80000000;
    localparam signed [31:0] INT32_MAX = 32'sh7fffffff;

    // Stage 1: s = acc + bias; x = s << left.
    reg               v1, skip1;
    reg        [7:0]  const1;
    reg signed [31:0] s1, x1, m1;
    reg        [4:0]  right1;
    wire       [4:0]  left0 = shift[7] ? 5'd0 : shift[4:0];
    wire       [4:0]  right0 = shift[7] ? (~shift[4:0] + 5'd1) : 5'd0;  // -shift, for shift in [-31, -1]
    wire signed [31:0] s0 = acc_in + bias;

    // Stage 2: the 64-bit product.
    reg               v2, skip2, sat2;
    reg        [7:0]  const2;
    reg signed [31:0] s2;
    reg signed [63:0] p2;
    reg        [4:0]  right2;

    wire signed [63:0] x64 = {{32{x1[31]}}, x1};
    wire signed [63:0] m64 = {{32{m1[31]}}, m1};

    // Stage 3 (combinational part): SaturatingRoundingDoublingHighMul, RoundingDivideByPOT.
    wire signed [63:0] nudged = p2 + (p2[63] ? NUDGE_NEG : NUDGE_POS);
    // (nudged / 2^31, rounded toward zero as C's division) fits in 32 bits: keep those.
    /* verilator lint_off UNUSEDSIGNAL */
    wire signed [63:0] toward_zero = nudged[63] ? nudged + TRUNC_NEG : nudged;
    /* verilator lint_on UNUSEDSIGNAL */
    wire signed [31:0] hm = sat2 ? INT32_MAX : toward_zero[62:31];
    wire       [31:0] mask = (32'd1 << right2) - 32'd1;
    wire       [31:0] remainder = hm & mask;
    wire       [31:0] threshold = (mask >> 1) + {31'd0, hm[31]};
    // Separate signed wires: an unsigned operand in the same expression would make >>> logical.
    wire signed [31:0] shifted = hm >>> right2;
    wire signed [31:0] round_up = {31'd0, remainder > threshold};
    wire signed [31:0] divided = shifted + round_up;
    wire signed [31:0] zp32 = {{23{out_zero_point[8]}}, out_zero_point};
    wire signed [31:0] with_zp = divided + zp32;
    wire signed [31:0] lo = {{23{out_min[8]}}, out_min};
    wire signed [31:0] hi = {{23{out_max[8]}}, out_max};
    /* verilator lint_off UNUSEDSIGNAL */
    wire signed [31:0] clamped = (with_zp < lo) ? lo : ((with_zp > hi) ? hi : with_zp);  // low byte used
    /* verilator lint_on UNUSEDSIGNAL */

    always @(posedge clk) begin
        if (!rst_n) begin
            v1 <= 1'b0;
            v2 <= 1'b0;
            v_out <= 1'b0;
        end else begin
            v1 <= v_in;
            v2 <= v1;
            v_out <= v2;
        end
    end

    always @(posedge clk) begin
        if (v_in) begin
            skip1 <= skip_in;
            const1 <= const_in;
            if (!skip_in) begin
                s1 <= s0;
                x1 <= s0 <<< left0;
                m1 <= mult;
                right1 <= right0;
            end
        end
        if (v1) begin
            skip2 <= skip1;
            const2 <= const1;
            if (!skip1) begin
                s2 <= s1;
                p2 <= x64 * m64;
                sat2 <= (x1 == INT32_MIN) && (m1 == INT32_MIN);
                right2 <= right1;
            end
        end
        if (v2) begin
            skip_out <= skip2;
            acc_out <= skip2 ? 32'sd0 : s2;
            q_out <= skip2 ? const2 : clamped[7:0];
        end
    end
endmodule
