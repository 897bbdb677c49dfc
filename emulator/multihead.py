"""A CHGNet with one shared message-passing trunk and K readout heads: the ensemble as one torch module.

Member k is the shared trunk (pretrained CHGNet 0.3.0 embeddings and interaction blocks) followed by readout head
k and the shared per-element reference energies (AtomRef). Sharing the trunk is what keeps a K-member ensemble
close to the cost of one CHGNet: the graph is featurised and the trunk runs once per batch, and the K force and
stress back-propagations run as one batched (vmapped) gradient call.

Units: energy eV (per atom where named so), forces eV/Å, stress GPa (CHGNet sign: positive = tensile, i.e. the ASE
sign), Å.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from chgnet.graph import CrystalGraph
from chgnet.model import CHGNet
from chgnet.model.model import BatchedGraph
from torch import Tensor, nn

# eV/Å³ -> GPa
EV_PER_A3_TO_GPA = 160.21766208


@dataclass
class HeadOutput:
    """Raw per-member outputs for one batch of graphs.

    Attributes:
        energy_per_atom: (K, n_graphs) eV/atom, including the AtomRef reference energies.
        forces: n_graphs tensors (K, n_atoms_i, 3), eV/Å (None if not requested; leading axis 1 when only
            the member-mean derivatives were asked for).
        stress: (K, n_graphs, 3, 3) GPa (None if not requested; K=1 as for forces).
    """

    energy_per_atom: Tensor
    forces: list[Tensor] | None
    stress: Tensor | None


class MultiHeadChgnet(nn.Module):
    """Shared CHGNet trunk + K readout MLP heads.

    The base CHGNet keeps its own `mlp` (the pretrained head) untouched; `heads` hold the members' heads.
    """

    def __init__(self, *, base: CHGNet, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if not base.mlp_first:
            raise ValueError("MultiHeadChgnet needs a CHGNet with mlp_first=True (per-site energies)")
        self.base = base
        self.heads = nn.ModuleList(heads)

    @classmethod
    def from_pretrained(cls, *, base: CHGNet, n_heads: int) -> MultiHeadChgnet:
        """K heads that are exact copies of the pretrained head (spread 0 until something makes them differ)."""
        return cls(base=base, heads=[copy.deepcopy(base.mlp) for _ in range(n_heads)])

    @property
    def n_heads(self) -> int:
        return len(self.heads)

    def batch(self, graphs: Sequence[CrystalGraph], *, compute_stress: bool) -> BatchedGraph:
        return BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=self.base.bond_basis_expansion,
            angle_basis_expansion=self.base.angle_basis_expansion,
            compute_stress=compute_stress,
        )

    def site_features(self, g: BatchedGraph) -> Tensor:
        """Per-atom features after the last interaction block and readout norm, (n_batch_atoms, 64)."""
        m = self.base
        atom_feas = m.atom_embedding(g.atomic_numbers - 1)
        bond_feas = m.bond_embedding(g.bond_bases_ag)
        bond_weights_ag = m.bond_weights_ag(g.bond_bases_ag)
        bond_weights_bg = m.bond_weights_bg(g.bond_bases_bg)
        has_angles = len(g.angle_bases) != 0
        angle_feas = m.angle_embedding(g.angle_bases) if has_angles else None
        for atom_layer, bond_layer, angle_layer in zip(
            m.atom_conv_layers[:-1], m.bond_conv_layers, m.angle_layers, strict=False
        ):
            atom_feas = atom_layer(
                atom_feas=atom_feas,
                bond_feas=bond_feas,
                bond_weights=bond_weights_ag,
                atom_graph=g.batched_atom_graph,
                directed2undirected=g.directed2undirected,
            )
            if has_angles and bond_layer is not None:
                bond_feas = bond_layer(
                    atom_feas=atom_feas,
                    bond_feas=bond_feas,
                    bond_weights=bond_weights_bg,
                    angle_feas=angle_feas,
                    bond_graph=g.batched_bond_graph,
                )
                if angle_layer is not None:
                    angle_feas = angle_layer(
                        atom_feas=atom_feas,
                        bond_feas=bond_feas,
                        angle_feas=angle_feas,
                        bond_graph=g.batched_bond_graph,
                    )
        atom_feas = m.atom_conv_layers[-1](
            atom_feas=atom_feas,
            bond_feas=bond_feas,
            bond_weights=bond_weights_ag,
            atom_graph=g.batched_atom_graph,
            directed2undirected=g.directed2undirected,
        )
        if m.readout_norm is not None:
            atom_feas = m.readout_norm(atom_feas)
        return atom_feas

    def forward(
        self,
        graphs: Sequence[CrystalGraph],
        *,
        compute_forces: bool = True,
        compute_stress: bool = True,
        create_graph: bool = False,
        per_member_derivatives: bool = True,
    ) -> HeadOutput:
        """Every member's energy per atom, forces and stress for a batch of graphs.

        Args:
            graphs: Crystal graphs (built once by the caller and shared by all members).
            compute_forces: Also return forces (eV/Å).
            compute_stress: Also return stress (GPa).
            create_graph: Keep the graph of the derivatives (needed to train on forces/stress).
            per_member_derivatives: Forces and stress of every member (K back-propagations); if False, only
                those of the member-mean energy (one back-propagation), returned with a leading axis of 1.
        """
        g = self.batch(graphs, compute_stress=compute_stress)
        n_graphs = len(graphs)
        owners = g.atom_owners.long()
        atoms_per_graph = torch.bincount(owners, minlength=n_graphs)
        feas = self.site_features(g)
        totals = []
        for head in self.heads:
            site_e = head(feas).view(-1)
            totals.append(torch.zeros(n_graphs, dtype=site_e.dtype).index_add(0, owners, site_e))
        total = torch.stack(totals)  # (K, n_graphs) eV, without reference energies
        forces = stress = None
        if compute_forces or compute_stress:
            inputs: list[Tensor] = []
            if compute_forces:
                inputs += list(g.atom_positions)
            if compute_stress:
                inputs += list(g.strains)
            k = self.n_heads if per_member_derivatives else 1
            # One batched VJP for the K members instead of K separate backward calls.
            if k > 1:
                grads = torch.autograd.grad(
                    total.sum(dim=1),
                    inputs,
                    grad_outputs=torch.eye(k, dtype=total.dtype),
                    is_grads_batched=True,
                    create_graph=create_graph,
                )
            else:
                grads = tuple(
                    gr.unsqueeze(0)
                    for gr in torch.autograd.grad(total.mean(dim=0).sum(), inputs, create_graph=create_graph)
                )
            if compute_forces:
                forces = [-gr for gr in grads[:n_graphs]]
                grads = grads[n_graphs:]
            if compute_stress:
                volumes = torch.as_tensor(g.volumes, dtype=total.dtype).view(1, n_graphs, 1, 1)
                stress = torch.stack(list(grads), dim=1) / volumes * EV_PER_A3_TO_GPA
        ref = self.base.composition_model(list(graphs)) if self.base.composition_model is not None else 0.0
        energy_per_atom = total / atoms_per_graph.to(total.dtype) + ref
        return HeadOutput(energy_per_atom=energy_per_atom, forces=forces, stress=stress)
